//! QMP over libvchan, as libxl 4.20 speaks it to a stub domain: dom0's
//! vchan-socket-proxy in front of the image's QMP server, and the CD-ROM change
//! sequence of libxl_disk.c with a PV disk dom0 really detaches and attaches.

use crate::cases::blk::xl_block;
use crate::cases::kernel::pv_config_with;
use crate::cases::linux::patterned_disk;
use crate::cases::runtime::finish;
use crate::cases::vchan::{SOCKET, start_proxy};
use crate::harness::{Ctx, Test, expect_contains};
use crate::xs::{self, data_path};
use crate::{proc, xl};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

pub fn tests() -> Vec<Test> {
    vec![Test {
        name: "xen::qmp::cd_insert_over_vchan_with_pv_disk_swap",
        limit: Duration::from_secs(400),
        run: cd_insert,
    }]
}

/// A QMP client on a vchan-socket-proxy's socket.
pub struct Client {
    stream: UnixStream,
    reader: BufReader<UnixStream>,
    next_id: u64,
    /// Events that arrived, oldest first, until [`Client::wait_event`] takes them.
    events: Vec<Value>,
}

impl Client {
    /// Connects to `socket`; returns the client and the greeting.
    pub fn connect(socket: &str) -> Result<(Self, Value), String> {
        let mut last_error = None;
        let stream = proc::poll(Duration::from_secs(30), Duration::from_millis(100), || {
            UnixStream::connect(socket).map_err(|e| last_error = Some(e)).ok()
        })
        .ok_or_else(|| {
            let why = last_error.map_or_else(String::new, |e| format!(": {e}"));
            format!("cannot connect to {socket} for 30 s{why}\n{}", xl::qmp_socket_picture(socket))
        })?;
        stream.set_read_timeout(Some(Duration::from_secs(20))).map_err(|e| e.to_string())?;
        let reader = BufReader::new(stream.try_clone().map_err(|e| e.to_string())?);
        let mut client = Client { stream, reader, next_id: 1, events: Vec::new() };
        let greeting = client.message()?;
        Ok((client, greeting))
    }

    fn message(&mut self) -> Result<Value, String> {
        let mut line = String::new();
        self.reader.read_line(&mut line).map_err(|e| format!("reading QMP: {e}"))?;
        serde_json::from_str(&line).map_err(|e| format!("QMP sent {line:?}: {e}"))
    }

    /// Runs a command; returns its `return` value, or Err with the error reply.
    pub fn execute(&mut self, command: &str, arguments: Value) -> Result<Value, String> {
        let id = self.next_id;
        self.next_id += 1;
        let mut request = json!({ "execute": command, "id": id });
        if !arguments.is_null() {
            request["arguments"] = arguments;
        }
        self.stream.write_all(format!("{request}\r\n").as_bytes()).map_err(|e| e.to_string())?;
        loop {
            let reply = self.message()?;
            if reply.get("event").is_some() {
                self.events.push(reply);
                continue;
            }
            if reply["id"] != json!(id) {
                return Err(format!("reply for another id: {reply}"));
            }
            return match reply.get("return") {
                Some(v) => Ok(v.clone()),
                None => Err(format!("{command}: {}", reply["error"])),
            };
        }
    }

    /// Forgets the events received so far.
    pub fn drop_events(&mut self) {
        self.events.clear();
    }

    /// The first event named `name` for which `wanted` holds (the events before it are
    /// dropped), waiting for it up to `limit`.
    pub fn wait_event(
        &mut self,
        name: &str,
        wanted: impl Fn(&Value) -> bool,
        limit: Duration,
    ) -> Result<Value, String> {
        let deadline = std::time::Instant::now() + limit;
        loop {
            if let Some(at) = self.events.iter().position(|e| e["event"] == json!(name) && wanted(e)) {
                let event = self.events.remove(at);
                self.events.drain(..at);
                return Ok(event);
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Err(format!("no {name} event within {} s (others: {:?})", limit.as_secs(), self.events));
            }
            self.stream.set_read_timeout(Some(left.min(Duration::from_secs(20)))).map_err(|e| e.to_string())?;
            match self.message() {
                Ok(message) if message.get("event").is_some() => self.events.push(message),
                Ok(message) => return Err(format!("a reply nobody asked for: {message}")),
                Err(e) if e.contains("timed out") || e.contains("temporarily unavailable") => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// query-block's entry for the drive whose device or qdev id is `id`.
    pub fn drive(&mut self, id: &str) -> Result<Value, String> {
        let block = self.execute("query-block", Value::Null)?;
        block
            .as_array()
            .into_iter()
            .flatten()
            .find(|d| d["qdev"] == json!(id) || d["device"] == json!(id))
            .cloned()
            .ok_or_else(|| format!("no {id} in query-block: {block}"))
    }

    /// The fdset whose entry is `stub-devid:<devid>`.
    pub fn stub_fdset(&mut self, devid: u32) -> Result<Option<i64>, String> {
        let fdsets = self.execute("query-fdsets", Value::Null)?;
        let opaque = format!("stub-devid:{devid}");
        Ok(fdsets.as_array().into_iter().flatten().find_map(|set| {
            let ours = set["fds"].as_array()?.iter().any(|fd| fd["opaque"] == json!(opaque));
            if ours { set["fdset-id"].as_i64() } else { None }
        }))
    }
}

fn cd_insert(ctx: &mut Ctx) -> Result<(), String> {
    patterned_disk("/tmp/cd-old.iso", 4)?;
    let name = "qmp-test";
    let cfg = ctx.prepare_domain(
        name,
        &pv_config_with(
            name,
            16,
            "qmp.path=data/qmp-vchan cd=5632",
            "disk = [ \"format=raw, vdev=hdc, access=ro, devtype=cdrom, target=/tmp/cd-old.iso\" ]\n",
        ),
    )?;
    xl::create(&cfg)?;
    let domid = xl::domid(name)?;
    xs::wait_for(&data_path(domid, "qmp-state"), Duration::from_secs(60), |v| v == "running")?;
    let _proxy = start_proxy(domid, &format!("/local/domain/{domid}/data/qmp-vchan"))?;
    let (mut qmp, greeting) = Client::connect(SOCKET)?;
    let version = &greeting["QMP"]["version"]["qemu"];
    if version["major"].as_i64().unwrap_or(0) < 3 {
        return Err(format!("greeting {greeting}: libxl wants a QEMU >= 2.11 to use its modern forms"));
    }
    qmp.execute("qmp_capabilities", Value::Null)?;
    let (old, new, drive) = change_cd(&mut qmp, &domid.to_string(), "hdc", 5632, 8)?;
    qmp.execute("quit", Value::Null).ok();
    drop(qmp);
    let log = finish(name)?;
    expect_contains(&log, "PV disk 5632: 4194304 bytes, read-only as fdset", "console log")?;
    expect_contains(&log, "PV disk 5632: 8388608 bytes, read-only as fdset", "console log")?;
    expect_contains(&log, "device model: quit", "console log")?;
    println!(
        "@@metric xen::qmp::cd_insert_over_vchan_with_pv_disk_swap| fdset {old} -> {new}; ide-5632: {}",
        drive["inserted"]
    );
    Ok(())
}

/// libxl_disk.c's cd-insert on a stub domain (4.20), with dom0 swapping the PV disk of
/// `domain` (the stub domain): a new `mib`-MiB image replaces CD-ROM `vdev` (devid
/// `devid`). Returns
/// the old and new fdsets and the drive's query-block entry afterwards.
pub fn change_cd(
    qmp: &mut Client,
    domain: &str,
    vdev: &str,
    devid: u32,
    mib: u64,
) -> Result<(i64, i64, Value), String> {
    let iso = format!("/tmp/cd-{mib}m.iso");
    patterned_disk(&iso, mib)?;
    qmp.execute("query-version", Value::Null)?;
    qmp.execute("eject", json!({ "id": format!("ide-{devid}") }))?;
    let old = qmp.stub_fdset(devid)?.ok_or_else(|| format!("no stub-devid:{devid} fdset before the swap"))?;
    qmp.execute("remove-fd", json!({ "fdset-id": old }))?;
    xl_block(&["block-detach", domain, vdev])?;
    xl_block(&["block-attach", domain, &format!("format=raw, vdev={vdev}, access=ro, devtype=cdrom, target={iso}")])?;
    let new = proc::poll(Duration::from_secs(40), Duration::from_millis(200), || qmp.stub_fdset(devid).ok().flatten())
        .ok_or("the new PV disk never appeared in query-fdsets")?;
    let filename = format!("/dev/fdset/{new}");
    qmp.execute(
        "blockdev-change-medium",
        json!({ "id": format!("ide-{devid}"), "filename": filename, "format": "host_device" }),
    )?;
    let drive = qmp.drive(&format!("ide-{devid}"))?;
    if drive["inserted"]["file"] != json!(filename) || drive["inserted"]["image"]["virtual-size"] != json!(mib << 20) {
        return Err(format!("after the change, ide-{devid} is {drive}"));
    }
    Ok((old, new, drive))
}
