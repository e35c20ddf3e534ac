//! The device model's QMP on a unix socket, for driving it with real QMP clients on the
//! host (tests/python/qmp_client_test.py, or `qmp-shell PATH` by hand).
//!
//!     cargo run -p devices --example unix_server -- /tmp/qmp.sock
//!
//! One shared [`Vm`] (the device model's run state and block layer, as the image has
//! it), set up as a stub domain for an HVM guest with a CD-ROM `ide-5632` (PV disk 5632
//! connected, medium `/dev/fdset/<its fdset>` as `host_device`) and a hard disk
//! `ide-768` (PV disk 768, `/dev/xvda`). Connections are served one at a time, each with
//! a fresh [`Session`] (as the image serves vchan-socket-proxy's clients); the next
//! waits in the listen backlog. A state file `xen-save-devices-state` writes is
//! discarded. The program exits after `quit`, or when stdin reaches end of file (its
//! parent went away). It prints `listening on PATH` on stdout once the socket accepts
//! connections.

use std::io::{BufRead, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use devices::block::{DriveConfig, DriveKind, MediumSource, PvDiskInfo};
use devices::vm::fuzz::{HDA, HDC};
use devices::vm::{Vm, VmConfig};
use qmp::{Session, Timestamp, VersionInfo};

fn main() {
    let mut args = std::env::args_os().skip(1);
    let (Some(path), None) = (args.next(), args.next()) else {
        eprintln!("usage: unix_server SOCKET-PATH");
        std::process::exit(2);
    };
    let path = PathBuf::from(path);
    if let Err(error) = serve(&path) {
        eprintln!("unix_server: {error}");
        let _ = std::fs::remove_file(&path);
        std::process::exit(1);
    }
    let _ = std::fs::remove_file(&path);
}

fn now() -> Timestamp {
    let since = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    Timestamp::new(since.as_secs() as i64, i64::from(since.subsec_micros()))
}

/// The VM a stub domain for a guest with `hda` and a CD in `hdc` starts with.
fn stub_domain_vm() -> Result<Vm, String> {
    let mut vm = Vm::new(VmConfig::default());
    let cd_fdset = vm.pv_disk_connected(HDC, PvDiskInfo { read_only: true, size_bytes: 650 << 20 });
    vm.pv_disk_connected(HDA, PvDiskInfo { read_only: false, size_bytes: 8 << 30 });
    let host_device = || Some(String::from("host_device"));
    let cd = DriveConfig {
        devid: HDC,
        kind: DriveKind::CdRom,
        read_only: true,
        medium: Some(MediumSource { filename: format!("/dev/fdset/{cd_fdset}"), format: host_device() }),
    };
    let disk = DriveConfig {
        devid: HDA,
        kind: DriveKind::HardDisk,
        read_only: false,
        medium: Some(MediumSource { filename: String::from("/dev/xvda"), format: host_device() }),
    };
    vm.add_drive(cd).map_err(|error| format!("adding ide-{HDC}: {error}"))?;
    vm.add_drive(disk).map_err(|error| format!("adding ide-{HDA}: {error}"))?;
    Ok(vm)
}

fn serve(path: &Path) -> Result<(), String> {
    let mut vm = stub_domain_vm()?;
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path).map_err(|error| format!("bind {}: {error}", path.display()))?;

    // The parent closing stdin (or dying) ends the program, whatever it is doing.
    let socket = path.to_path_buf();
    std::thread::spawn(move || {
        let mut sink = Vec::new();
        let _ = std::io::stdin().lock().read_to_end(&mut sink);
        let _ = std::fs::remove_file(&socket);
        std::process::exit(0);
    });

    println!("listening on {}", path.display());
    let _ = std::io::stdout().flush();
    for (number, stream) in listener.incoming().enumerate() {
        let stream = stream.map_err(|error| format!("accept: {error}"))?;
        eprintln!("unix_server: connection {} opened", number + 1);
        let mut session = Session::open(&mut vm, &VersionInfo::default());
        match converse(&mut vm, &mut session, stream) {
            Ok(()) => eprintln!("unix_server: connection {} closed", number + 1),
            Err(error) => eprintln!("unix_server: connection {} failed: {error}", number + 1),
        }
        if vm.quit_requested() {
            eprintln!("unix_server: quit");
            return Ok(());
        }
    }
    Ok(())
}

/// Moves bytes between one client and its session until the client hangs up or quits.
fn converse(vm: &mut Vm, session: &mut Session, stream: UnixStream) -> std::io::Result<()> {
    let mut writer = stream.try_clone()?;
    let mut reader = std::io::BufReader::with_capacity(64 * 1024, stream);
    writer.write_all(&session.take_output())?;
    loop {
        let input = reader.fill_buf()?;
        if input.is_empty() {
            return Ok(());
        }
        let len = input.len();
        session.feed(vm, input, now());
        reader.consume(len);
        while session.take_effect().is_some() {
            session.complete(vm, Ok(()), now());
        }
        writer.write_all(&session.take_output())?;
        if session.is_closed() {
            // After `quit` QEMU reads nothing more and closes the connection.
            return writer.shutdown(std::net::Shutdown::Both);
        }
    }
}
