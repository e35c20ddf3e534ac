//! The `stubctl` command: xl-like subcommands for guests whose device model is our
//! stub domain. Exit status 0, or 1 with a one-line reason on stderr.

#![forbid(unsafe_code)]

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use stubctl::{Progress, cdrom, checkpoint, status};

/// The dom0 helper for HVM guests whose device model is the rust-stubdom stub domain.
#[derive(Parser)]
#[command(name = "stubctl", version, about, long_about = None)]
struct Cli {
    /// Say each step and what it touches.
    #[arg(short, long, global = true)]
    verbose: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Insert IMAGE into the guest's CD-ROM VDEV (libxl 4.20's stub-domain sequence:
    /// QMP eject, the stub domain's PV disk swapped, blockdev-change-medium).
    CdInsert {
        /// The guest's name or domid.
        guest: String,
        /// The CD-ROM's virtual device, as in the guest's config (e.g. hdc).
        vdev: String,
        /// The new medium: a file or block device dom0 can read.
        image: PathBuf,
    },
    /// Eject the medium of the guest's CD-ROM VDEV (the drive stays, empty).
    CdEject {
        /// The guest's name or domid.
        guest: String,
        /// The CD-ROM's virtual device (e.g. hdc).
        vdev: String,
    },
    /// Take checkpoints of the running guest by the ckpt/1 protocol: each announced in
    /// xenstore (/local/domain/<domid>/migration), taken once an agent writes
    /// entering_fg_acked=1 (abort=1 cancels at any point; no answer within
    /// --ack-timeout fails it), saved to DIR/<name>.<seq>.ckpt (a file `xl restore`
    /// reads), the guest resumed afterwards whatever happened.
    Checkpoint {
        /// The guest's name or domid.
        guest: String,
        /// Where the checkpoint files go.
        #[arg(long)]
        dir: PathBuf,
        /// Seconds between one checkpoint's end and the next one's start.
        #[arg(long, default_value_t = 10.0)]
        interval: f64,
        /// How many checkpoints to take (default: until one is not committed).
        #[arg(long)]
        count: Option<u64>,
        /// How many committed checkpoints of the guest to keep in DIR.
        #[arg(long, default_value_t = 3)]
        keep: usize,
        /// Seconds the agent has to acknowledge a suspend.
        #[arg(long, default_value_t = 60.0)]
        ack_timeout: f64,
    },
    /// Show the guest's stub domain, device model state, drives, media and fdsets.
    Status {
        /// The guest's name or domid.
        guest: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let progress = Progress::new(cli.verbose);
    let result = match &cli.command {
        Command::CdInsert { guest, vdev, image } => cdrom::change(guest, vdev, Some(image), &progress).map(|c| {
            format!(
                "{}: {vdev} now holds {} (fdset {}; was {})",
                c.guest.name,
                c.new_medium.as_deref().unwrap_or("nothing"),
                c.fdset,
                c.old_medium.as_deref().unwrap_or("empty")
            )
        }),
        Command::CdEject { guest, vdev } => cdrom::change(guest, vdev, None, &progress)
            .map(|c| format!("{}: {vdev} is empty (was {})", c.guest.name, c.old_medium.as_deref().unwrap_or("empty"))),
        Command::Checkpoint { guest, dir, interval, count, keep, ack_timeout } => {
            let seconds = |value: f64, what: &str| {
                Duration::try_from_secs_f64(value).map_err(|_| format!("--{what} {value} is not a number of seconds"))
            };
            match (seconds(*interval, "interval"), seconds(*ack_timeout, "ack-timeout")) {
                (Ok(interval), Ok(ack_limit)) => {
                    let options =
                        checkpoint::Options { dir: dir.clone(), interval, count: *count, keep: *keep, ack_limit };
                    checkpoint::run(guest, &options, &progress, |done| {
                        println!(
                            "checkpoint {}: {} ({} bytes; guest suspended {:.3} s, cycle {:.3} s)",
                            done.seq,
                            done.file.display(),
                            done.len_bytes,
                            done.paused.as_secs_f64(),
                            done.took.as_secs_f64()
                        );
                    })
                    .map(|n| format!("{n} checkpoints committed"))
                }
                (Err(e), _) | (_, Err(e)) => {
                    eprintln!("stubctl: {e}");
                    return ExitCode::FAILURE;
                }
            }
        }
        Command::Status { guest } => status::status(guest, &progress).map(|s| s.trim_end().to_string()),
    };
    match result {
        Ok(text) => {
            println!("{text}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("stubctl: {error}");
            ExitCode::FAILURE
        }
    }
}
