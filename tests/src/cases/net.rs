//! netfront + smoltcp in the image against dom0's netback, over the test bed's
//! bridge xenbr0. Addresses come from 192.0.2.0/24 (TEST-NET-1): the network exists
//! only inside the emulated machine (QEMU runs it with no NIC at all).

use crate::cases::kernel::pv_config_with;
use crate::cases::runtime::finish;
use crate::harness::{Ctx, Test, expect_contains};
use crate::xs::{self, data_path};
use crate::{proc, xl};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

pub fn tests() -> Vec<Test> {
    vec![Test { name: "xen::net::ping_100_and_10_mib_tcp_echo", limit: Duration::from_secs(400), run: ping_and_echo }]
}

pub const DOM0_IP: &str = "192.0.2.1";

/// Gives dom0 its address on the bridge (once per boot).
pub fn dom0_address() -> Result<(), String> {
    let out = proc::run(Command::new("ip").args(["addr", "show", "dev", "xenbr0"]), Duration::from_secs(10))?;
    if out.stdout.contains(DOM0_IP) {
        return Ok(());
    }
    let out = proc::run(
        Command::new("ip").args(["addr", "add", &format!("{DOM0_IP}/24"), "dev", "xenbr0"]),
        Duration::from_secs(10),
    )?;
    if out.success { Ok(()) } else { Err(format!("ip addr add: {}", out.stderr)) }
}

/// Starts the image with a vif on xenbr0 and `cmdline`; returns its domid once its
/// stack is up.
pub fn start_net_image(ctx: &mut Ctx, name: &str, cmdline: &str) -> Result<u32, String> {
    dom0_address()?;
    let cfg = ctx.prepare_domain(name, &pv_config_with(name, 16, cmdline, "vif = [ \"bridge=xenbr0\" ]\n"))?;
    xl::create(&cfg)?;
    let domid = xl::domid(name)?;
    xs::wait_for(&data_path(domid, "net-ready"), Duration::from_secs(60), |v| v == "1")?;
    Ok(domid)
}

fn ping_and_echo(ctx: &mut Ctx) -> Result<(), String> {
    const BYTES: usize = 10 << 20;
    let name = "net-test";
    start_net_image(ctx, name, "selftest=net ip=192.0.2.2/24 connections=1")?;
    let ping = proc::run(
        Command::new("ping").args(["-c", "100", "-A", "-W", "5", "-w", "120", "192.0.2.2"]),
        Duration::from_secs(150),
    )?;
    let summary = ping.stdout.lines().find(|l| l.contains("packets transmitted")).unwrap_or_default().to_string();
    if !summary.contains("100 packets transmitted, 100 packets received") {
        let diag = proc::run(
            Command::new("sh").args(["-c", "ip -s link; brctl show; ip addr; ip neigh"]),
            Duration::from_secs(20),
        )
        .map(|o| o.stdout)
        .unwrap_or_default();
        return Err(format!("ping: {summary:?}\n{}{}\n{diag}", ping.stdout, ping.stderr));
    }
    let rtt = ping.stdout.lines().find(|l| l.contains("round-trip")).unwrap_or_default().to_string();

    let mut stream = TcpStream::connect_timeout(&"192.0.2.2:7".parse().unwrap(), Duration::from_secs(30))
        .map_err(|e| format!("connect: {e}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(60))).map_err(|e| e.to_string())?;
    let data: Vec<u8> = (0..BYTES as u64).map(|i| (i.wrapping_mul(0x2545_f491) >> 11) as u8).collect();
    let sent = data.clone();
    let mut writer = stream.try_clone().map_err(|e| e.to_string())?;
    let started = Instant::now();
    let send = std::thread::spawn(move || writer.write_all(&sent));
    let mut back = vec![0u8; BYTES];
    stream.read_exact(&mut back).map_err(|e| format!("reading the echo: {e}"))?;
    let elapsed = started.elapsed();
    send.join().map_err(|_| "writer panicked")?.map_err(|e| format!("writing: {e}"))?;
    if back != data {
        let at = back.iter().zip(&data).position(|(a, b)| a != b).unwrap_or(0);
        return Err(format!("TCP echo differs at byte {at}"));
    }
    drop(stream);
    let log = finish(name)?;
    expect_contains(&log, "net: served 1 connections, echoed 10485760 bytes,", "console log")?;
    println!(
        "@@metric xen::net::ping_100_and_10_mib_tcp_echo| {summary}; {rtt}; 10 MiB TCP echo in {:.2} s ({:.2} MB/s each way)",
        elapsed.as_secs_f64(),
        BYTES as f64 / elapsed.as_secs_f64() / 1e6
    );
    Ok(())
}

/// Sends `bytes` to `addr`:5001 (a discard service) and returns MB/s, timed from
/// connect to the peer's close after it has read everything.
pub fn tcp_send_rate(addr: &str, bytes: usize) -> Result<f64, String> {
    let target = format!("{addr}:5001").parse().map_err(|e| format!("{e}"))?;
    let mut stream = proc::poll(Duration::from_secs(90), Duration::from_millis(500), || {
        TcpStream::connect_timeout(&target, Duration::from_secs(5)).ok()
    })
    .ok_or_else(|| format!("nobody listens on {addr}:5001"))?;
    stream.set_read_timeout(Some(Duration::from_secs(120))).map_err(|e| e.to_string())?;
    let chunk = vec![0x5au8; 1 << 16];
    let started = Instant::now();
    let mut left = bytes;
    while left > 0 {
        let n = left.min(chunk.len());
        stream.write_all(&chunk[..n]).map_err(|e| format!("sending: {e}"))?;
        left -= n;
    }
    stream.shutdown(std::net::Shutdown::Write).map_err(|e| e.to_string())?;
    // The peer closes once it has read everything.
    let mut rest = Vec::new();
    let _ = stream.read_to_end(&mut rest);
    Ok(bytes as f64 / started.elapsed().as_secs_f64() / 1e6)
}
