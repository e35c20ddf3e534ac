//! The parts of `xl` the tests use, with parsers for its output.

use crate::proc;
use std::process::Command;
use std::time::Duration;

/// One row of `xl list`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DomainRow {
    pub name: String,
    pub domid: u32,
    pub mem_mib: u64,
    /// The six state flags, e.g. `--ps--` (running, blocked, paused, shutdown, crashed, dying).
    pub state: String,
}

impl DomainRow {
    pub fn is_shutdown(&self) -> bool {
        self.state.as_bytes().get(3) == Some(&b's')
    }

    pub fn is_crashed(&self) -> bool {
        self.state.as_bytes().get(4) == Some(&b'c')
    }
}

/// Parses `xl list` output (a header line, then one row per domain).
pub fn parse_list(text: &str) -> Vec<DomainRow> {
    text.lines()
        .skip_while(|l| !l.starts_with("Name"))
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            // Name ID Mem VCPUs State Time(s) [Security Label]
            if f.len() < 6 {
                return None;
            }
            Some(DomainRow {
                name: f[0].to_string(),
                domid: f[1].parse().ok()?,
                mem_mib: f[2].parse().ok()?,
                state: f[4].to_string(),
            })
        })
        .collect()
}

fn xl(args: &[&str], limit_s: u64) -> Result<proc::Output, String> {
    proc::run(Command::new("xl").args(args), Duration::from_secs(limit_s))
}

/// `xl create CFG`; fails with xl's own messages when xl does.
pub fn create(cfg_path: &str) -> Result<(), String> {
    let out = xl(&["create", cfg_path], 120)?;
    if out.success {
        Ok(())
    } else {
        Err(format!("xl create {cfg_path} failed ({:?}): {}{}", out.code, out.stdout, out.stderr))
    }
}

/// The row for domain `name`, if it exists.
pub fn find(name: &str) -> Result<Option<DomainRow>, String> {
    let out = xl(&["list"], 30)?;
    if !out.success {
        return Err(format!("xl list failed: {}", out.stderr));
    }
    Ok(parse_list(&out.stdout).into_iter().find(|d| d.name == name))
}

/// Waits until `name` has shut down (it must be configured to be preserved) and returns its row.
pub fn wait_shutdown(name: &str, limit: Duration) -> Result<DomainRow, String> {
    let mut last = None;
    proc::poll(limit, Duration::from_millis(250), || match find(name) {
        Ok(Some(d)) if d.is_shutdown() => Some(d),
        Ok(other) => {
            last = other;
            None
        }
        Err(_) => None,
    })
    .ok_or_else(|| format!("{name} did not shut down within {} s (last seen: {last:?})", limit.as_secs()))
}

/// Destroys `name` if it exists; best effort, for clean-up.
pub fn destroy(name: &str) {
    let _ = xl(&["destroy", name], 60);
}

/// `xl domid NAME`.
pub fn domid(name: &str) -> Result<u32, String> {
    let out = xl(&["domid", name], 30)?;
    out.stdout.trim().parse().map_err(|_| format!("xl domid {name}: {}{}", out.stdout, out.stderr))
}

/// The hypervisor's console ring (`xl dmesg`).
pub fn dmesg() -> Result<String, String> {
    let out = xl(&["dmesg"], 30)?;
    if out.success { Ok(out.stdout) } else { Err(format!("xl dmesg failed: {}", out.stderr)) }
}

/// What dom0 knows about libxl's QMP socket `socket` (`/var/run/xen/qmp-libxl-<domid>`)
/// when a client cannot connect to it: the socket files there, the running
/// vchan-socket-proxy processes, `xl list`, the domain's last hypervisor-log lines and
/// the tails of xl's and the proxy's logs. libxl removes the socket when it destroys
/// the domain's stub domain (a guest that crashed, rebooted or powered off with
/// `destroy` as its action); the proxy leaves it behind when it exits.
pub fn qmp_socket_picture(socket: &str) -> String {
    let mut out = String::new();
    let domid = socket.rsplit('-').next().and_then(|d| d.parse::<u32>().ok());
    let sockets: Vec<String> = std::fs::read_dir("/var/run/xen")
        .map(|dir| {
            dir.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|name| name.starts_with("qmp-"))
                .collect()
        })
        .unwrap_or_default();
    out.push_str(&format!("  /var/run/xen/qmp-*: {sockets:?}\n"));
    out.push_str(&format!("  vchan-socket-proxy processes: {:?}\n", processes_named("vchan-socket-proxy")));
    if let Ok(list) = xl(&["list"], 30) {
        out.push_str(&format!("  xl list:\n{}", indent(&list.stdout)));
    }
    if let (Some(domid), Ok(log)) = (domid, dmesg()) {
        let tag = format!("(d{domid}) ");
        let vcpu = format!("d{domid}v");
        let domain = format!("Domain {domid} ");
        let lines: Vec<&str> =
            log.lines().filter(|l| l.contains(&tag) || l.contains(&vcpu) || l.contains(&domain)).collect();
        let tail = lines[lines.len().saturating_sub(12)..].join("\n");
        out.push_str(&format!("  hypervisor log, domain {domid}'s last lines:\n{}", indent(&tail)));
    }
    for log in newest_logs("/var/log/xen", &["xl-", "qmp-proxy-"], 3) {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(10)..].join("\n");
        out.push_str(&format!("  {log} (last lines):\n{}", indent(&tail)));
    }
    out
}

/// What dom0 and the domains are doing, for a start-up that was too slow: dom0's load
/// average, its busiest processes (busybox `top`), `xl list` (each domain's CPU seconds)
/// and `xl vcpu-list` (where each vCPU runs).
pub fn load_picture() -> String {
    let mut out = String::new();
    let loadavg = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    out.push_str(&format!("  dom0 /proc/loadavg: {}\n", loadavg.trim()));
    if let Ok(top) = proc::run(Command::new("top").args(["-b", "-n", "1"]), Duration::from_secs(30)) {
        let head: Vec<&str> = top.stdout.lines().take(14).collect();
        out.push_str(&format!("  dom0 top:\n{}", indent(&head.join("\n"))));
    }
    for args in [&["list"][..], &["vcpu-list"][..]] {
        if let Ok(list) = xl(args, 30) {
            out.push_str(&format!("  xl {}:\n{}", args.join(" "), indent(&list.stdout)));
        }
    }
    out
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("    {l}\n")).collect()
}

/// The pids and command lines of processes whose command line contains `needle`.
fn processes_named(needle: &str) -> Vec<String> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.filter_map(Result::ok)
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            cmdline.contains(needle).then(|| format!("{pid}: {}", cmdline.trim()))
        })
        .collect()
}

/// The `count` most recently written files in `dir` whose names start with one of `prefixes`.
fn newest_logs(dir: &str, prefixes: &[&str], count: usize) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut logs: Vec<(std::time::SystemTime, String)> = entries
        .filter_map(Result::ok)
        .filter(|e| prefixes.iter().any(|p| e.file_name().to_string_lossy().starts_with(p)))
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path().display().to_string())))
        .collect();
    logs.sort();
    logs.into_iter().rev().take(count).map(|(_, path)| path).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIST: &str = "\
Name                                        ID   Mem VCPUs\tState\tTime(s)
Domain-0                                     0  1024     2     r-----      12.3
banner                                       3    16     1     ---s--       0.1
crashy                                       4    16     1     ---sc-       0.1
";

    #[test]
    fn parses_rows_and_state_flags() {
        let rows = parse_list(LIST);
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[1], DomainRow { name: "banner".into(), domid: 3, mem_mib: 16, state: "---s--".into() });
        assert!(rows[1].is_shutdown() && !rows[1].is_crashed());
        assert!(rows[2].is_shutdown() && rows[2].is_crashed());
        assert!(!rows[0].is_shutdown());
    }

    #[test]
    fn ignores_noise_and_short_rows() {
        assert!(parse_list("").is_empty());
        assert!(parse_list("libxl: warning\nName ID\nbad row\n").is_empty());
    }
}
