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
    vec![Test { name: "xen::qmp::cd_insert_over_vchan_with_pv_disk_swap", limit: Duration::from_secs(400), run: cd_insert }]
}

/// A QMP client on the proxy's socket.
struct Client {
    stream: UnixStream,
    reader: BufReader<UnixStream>,
    next_id: u64,
}

impl Client {
    fn connect() -> Result<(Self, Value), String> {
        let stream = proc::poll(Duration::from_secs(30), Duration::from_millis(100), || UnixStream::connect(SOCKET).ok())
            .ok_or("cannot connect to the proxy's socket")?;
        stream.set_read_timeout(Some(Duration::from_secs(20))).map_err(|e| e.to_string())?;
        let reader = BufReader::new(stream.try_clone().map_err(|e| e.to_string())?);
        let mut client = Client { stream, reader, next_id: 1 };
        let greeting = client.message()?;
        Ok((client, greeting))
    }

    fn message(&mut self) -> Result<Value, String> {
        let mut line = String::new();
        self.reader.read_line(&mut line).map_err(|e| format!("reading QMP: {e}"))?;
        serde_json::from_str(&line).map_err(|e| format!("QMP sent {line:?}: {e}"))
    }

    /// Runs a command; returns its `return` value, or Err with the error reply.
    fn execute(&mut self, command: &str, arguments: Value) -> Result<Value, String> {
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
                continue; // libxl ignores events too
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

    /// The fdset whose entry is `stub-devid:<devid>`.
    fn stub_fdset(&mut self, devid: u32) -> Result<Option<i64>, String> {
        let fdsets = self.execute("query-fdsets", Value::Null)?;
        let opaque = format!("stub-devid:{devid}");
        Ok(fdsets.as_array().into_iter().flatten().find_map(|set| {
            let ours = set["fds"].as_array()?.iter().any(|fd| fd["opaque"] == json!(opaque));
            if ours { set["fdset-id"].as_i64() } else { None }
        }))
    }
}

fn cd_insert(ctx: &mut Ctx) -> Result<(), String> {
    const CD: u32 = 5632; // hdc, as libxl numbers it
    patterned_disk("/tmp/cd-old.iso", 4)?;
    patterned_disk("/tmp/cd-new.iso", 8)?;
    let name = "qmp-test";
    let cfg = ctx.prepare_domain(
        name,
        &pv_config_with(
            name,
            16,
            "selftest=qmp qmp.path=data/qmp-vchan cd=5632",
            "disk = [ \"format=raw, vdev=hdc, access=ro, devtype=cdrom, target=/tmp/cd-old.iso\" ]\n",
        ),
    )?;
    xl::create(&cfg)?;
    let domid = xl::domid(name)?;
    let dom = domid.to_string();
    xs::wait_for(&data_path(domid, "qmp-ready"), Duration::from_secs(60), |v| v == "1")?;
    let _proxy = start_proxy(domid, &format!("/local/domain/{domid}/data/qmp-vchan"))?;
    let (mut qmp, greeting) = Client::connect()?;
    let version = &greeting["QMP"]["version"]["qemu"];
    if version["major"].as_i64().unwrap_or(0) < 3 {
        return Err(format!("greeting {greeting}: libxl wants a QEMU >= 2.11 to use its modern forms"));
    }
    qmp.execute("qmp_capabilities", Value::Null)?;

    // libxl_disk.c, cd-insert on a stub domain:
    qmp.execute("query-version", Value::Null)?;
    qmp.execute("eject", json!({ "id": format!("ide-{CD}") }))?;
    let old = qmp.stub_fdset(CD)?.ok_or("no stub-devid:5632 fdset before the swap")?;
    qmp.execute("remove-fd", json!({ "fdset-id": old }))?;
    xl_block(&["block-detach", &dom, "hdc"])?;
    xl_block(&["block-attach", &dom, "format=raw, vdev=hdc, access=ro, devtype=cdrom, target=/tmp/cd-new.iso"])?;
    let new = proc::poll(Duration::from_secs(40), Duration::from_millis(200), || qmp.stub_fdset(CD).ok().flatten())
        .ok_or("the new PV disk never appeared in query-fdsets")?;
    let filename = format!("/dev/fdset/{new}");
    qmp.execute(
        "blockdev-change-medium",
        json!({ "id": format!("ide-{CD}"), "filename": filename, "format": "host_device" }),
    )?;
    let block = qmp.execute("query-block", Value::Null)?;
    let drive = block
        .as_array()
        .into_iter()
        .flatten()
        .find(|d| d["qdev"] == json!(format!("ide-{CD}")) || d["device"] == json!(format!("ide-{CD}")))
        .ok_or_else(|| format!("no ide-{CD} in query-block: {block}"))?
        .clone();
    if drive["inserted"]["file"] != json!(filename) {
        return Err(format!("after the change, ide-{CD} is {drive}"));
    }
    qmp.execute("quit", Value::Null).ok();
    drop(qmp);
    let log = finish(name)?;
    expect_contains(&log, "qmp: PV disk 5632 connected (4194304 bytes)", "console log")?;
    expect_contains(&log, "qmp: PV disk 5632 connected (8388608 bytes)", "console log")?;
    expect_contains(&log, "qmp: ok", "console log")?;
    println!("@@metric xen::qmp::cd_insert_over_vchan_with_pv_disk_swap| fdset {old} -> {new}; ide-{CD}: {}", drive["inserted"]);
    Ok(())
}
