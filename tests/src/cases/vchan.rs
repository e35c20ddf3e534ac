//! The image's libvchan server against dom0's real client: Debian's
//! vchan-socket-proxy (the program libxl runs for a stub domain's QMP), which opens a
//! new vchan connection for every unix-socket client.

use crate::cases::runtime::start_image;
use crate::harness::{Ctx, Test, expect_contains};
use crate::{proc, xs};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub fn tests() -> Vec<Test> {
    vec![Test {
        name: "xen::vchan::proxy_exchanges_10_mib_then_reconnects_100_times",
        limit: Duration::from_secs(600),
        run: proxy,
    }]
}

pub const SOCKET: &str = "/tmp/vchan-test.sock";
const GREETING: &str = "rust-stubdom vchan echo\n";

/// Kills the proxy when the test ends.
pub struct Proxy(std::process::Child);

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts dom0's vchan-socket-proxy (client mode) for `domid`'s server at `path`,
/// listening on SOCKET; it is killed when the returned guard drops.
pub fn start_proxy(domid: u32, path: &str) -> Result<Proxy, String> {
    xs::wait_for(&format!("{path}/event-channel"), Duration::from_secs(60), |_| true)?;
    let _ = std::fs::remove_file(SOCKET);
    Ok(Proxy(
        Command::new("vchan-socket-proxy")
            .args([&domid.to_string(), path, SOCKET])
            .stdin(Stdio::null())
            .spawn()
            .map_err(|e| format!("vchan-socket-proxy: {e}"))?,
    ))
}

/// Connects to the proxy; with `greeting`, reads and checks the image's greeting.
fn connect_with(greeting: bool) -> Result<(UnixStream, BufReader<UnixStream>), String> {
    let stream = proc::poll(Duration::from_secs(30), Duration::from_millis(100), || UnixStream::connect(SOCKET).ok())
        .ok_or("cannot connect to the proxy's socket")?;
    stream.set_read_timeout(Some(Duration::from_secs(60))).map_err(|e| e.to_string())?;
    let mut reader = BufReader::new(stream.try_clone().map_err(|e| e.to_string())?);
    if greeting {
        let mut line = String::new();
        reader.read_line(&mut line).map_err(|e| format!("reading the greeting: {e}"))?;
        if line != GREETING {
            return Err(format!("greeting was {line:?}"));
        }
    }
    Ok((stream, reader))
}

fn connect() -> Result<(UnixStream, BufReader<UnixStream>), String> {
    connect_with(true)
}

/// Sends `bytes` pseudo-random bytes through the proxy and checks they come back;
/// returns the time from the first byte sent to the last byte received.
pub fn echo_exchange(greeting: bool, bytes: usize) -> Result<Duration, String> {
    let (stream, mut reader) = connect_with(greeting)?;
    let data: Vec<u8> = (0..bytes as u64).map(|i| (i.wrapping_mul(0x9e37_79b9) >> 13) as u8).collect();
    let started = Instant::now();
    let sent = data.clone();
    let mut writer = stream.try_clone().map_err(|e| e.to_string())?;
    let send = std::thread::spawn(move || writer.write_all(&sent));
    let mut back = vec![0u8; bytes];
    reader.read_exact(&mut back).map_err(|e| format!("reading the echo: {e}"))?;
    let elapsed = started.elapsed();
    send.join().map_err(|_| "writer panicked")?.map_err(|e| format!("writing: {e}"))?;
    if back != data {
        let at = back.iter().zip(&data).position(|(a, b)| a != b).unwrap_or(0);
        return Err(format!("echo differs from what was sent at byte {at}"));
    }
    let _ = stream.shutdown(std::net::Shutdown::Both);
    Ok(elapsed)
}

fn proxy(ctx: &mut Ctx) -> Result<(), String> {
    const BYTES: usize = 10 << 20;
    const RECONNECTS: usize = 100;
    let name = "vchan-test";
    let domid = start_image(ctx, name, &format!("selftest=vchan connections={}", RECONNECTS + 1))?;
    let path = format!("/local/domain/{domid}/data/vchan");
    let _proxy = start_proxy(domid, &path)?;

    // 10 MiB of pseudo-random bytes out, the same back, concurrently.
    let elapsed = echo_exchange(true, BYTES)?;
    let rate = BYTES as f64 / elapsed.as_secs_f64() / 1e6;

    for i in 0..RECONNECTS {
        let (mut stream, mut reader) = connect().map_err(|e| format!("reconnect {i}: {e}"))?;
        let msg = format!("hello {i}\n");
        stream.write_all(msg.as_bytes()).map_err(|e| format!("reconnect {i}: {e}"))?;
        let mut line = String::new();
        reader.read_line(&mut line).map_err(|e| format!("reconnect {i}: {e}"))?;
        if line != msg {
            return Err(format!("reconnect {i}: echo {line:?}"));
        }
    }
    let log = crate::cases::runtime::finish(name)?;
    expect_contains(&log, &format!("vchan: served {} connections", RECONNECTS + 1), "console log")?;
    println!(
        "@@metric xen::vchan::proxy_exchanges_10_mib_then_reconnects_100_times| 10 MiB echoed through vchan-socket-proxy in {:.2} s ({rate:.2} MB/s each way), then {RECONNECTS} reconnects",
        elapsed.as_secs_f64()
    );
    Ok(())
}
