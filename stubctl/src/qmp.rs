//! A QMP client for libxl's socket to a guest's device model, and parsers for the
//! replies stubctl reads (query-fdsets, query-block, query-status).
//!
//! Every line from the socket is outside input (the device model runs in another
//! domain): lines are bounded ([`LINE_MAX_BYTES`]), parsed into [`Message`] without
//! panicking, and a reply that does not have the expected shape is an error, not a
//! default.

use serde::Deserialize;
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

/// The longest line accepted from the device model (query-block of many drives fits).
pub const LINE_MAX_BYTES: usize = 1 << 20;
/// How many events may arrive before a reply before the session is given up.
const EVENTS_MAX: usize = 1000;

/// Why a QMP exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    #[error("cannot connect to {socket}: {source}")]
    Connect { socket: String, source: std::io::Error },
    #[error("QMP socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("the device model closed the QMP connection")]
    Closed,
    #[error("no answer from the device model within {0} s")]
    Timeout(u64),
    #[error("a QMP line longer than {LINE_MAX_BYTES} bytes")]
    LineTooLong,
    #[error("the device model sent something that is not QMP: {0}")]
    Malformed(String),
    #[error("the device model refused {command}: {class}: {desc}")]
    Refused { command: String, class: String, desc: String },
    #[error("{0} events and no reply")]
    TooManyEvents(usize),
}

/// One line from a QMP server.
#[derive(Clone, Debug, PartialEq)]
pub enum Message {
    /// The greeting, with the QEMU version the server claims.
    Greeting { major: u64, minor: u64, micro: u64 },
    /// A command's result.
    Return { id: Option<Value>, value: Value },
    /// A command's error.
    Error { id: Option<Value>, class: String, desc: String },
    /// An asynchronous event.
    Event { name: String, data: Value },
}

/// Parses one QMP line.
pub fn parse_message(line: &[u8]) -> Result<Message, QmpError> {
    let malformed = |why: &str| QmpError::Malformed(format!("{why}: {}", String::from_utf8_lossy(line)));
    let value: Value = serde_json::from_slice(line).map_err(|e| malformed(&e.to_string()))?;
    let object = value.as_object().ok_or_else(|| malformed("not an object"))?;
    let id = object.get("id").cloned();
    if let Some(greeting) = object.get("QMP") {
        let qemu = &greeting["version"]["qemu"];
        let part = |name: &str| qemu[name].as_u64().ok_or_else(|| malformed("a greeting without its QEMU version"));
        return Ok(Message::Greeting { major: part("major")?, minor: part("minor")?, micro: part("micro")? });
    }
    if let Some(value) = object.get("return") {
        return Ok(Message::Return { id, value: value.clone() });
    }
    if let Some(error) = object.get("error") {
        let field = |name: &str| {
            error[name].as_str().map(str::to_string).ok_or_else(|| malformed("an error without class and desc"))
        };
        return Ok(Message::Error { id, class: field("class")?, desc: field("desc")? });
    }
    if let Some(name) = object.get("event").and_then(Value::as_str) {
        return Ok(Message::Event { name: name.to_string(), data: object.get("data").cloned().unwrap_or(Value::Null) });
    }
    Err(malformed("neither greeting, return, error nor event"))
}

/// One fd of an fdset (query-fdsets).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct FdInfo {
    pub fd: i64,
    #[serde(default)]
    pub opaque: Option<String>,
}

/// One fdset (query-fdsets).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct FdSet {
    #[serde(rename = "fdset-id")]
    pub fdset_id: i64,
    pub fds: Vec<FdInfo>,
}

/// query-fdsets' return value.
pub fn parse_fdsets(value: &Value) -> Result<Vec<FdSet>, QmpError> {
    Vec::<FdSet>::deserialize(value).map_err(|e| QmpError::Malformed(format!("query-fdsets: {e}: {value}")))
}

/// The opaque string our stub domain gives the fd of PV disk `devid` (as Linux stub
/// domains and libxl 4.20 do).
pub fn stub_devid_opaque(devid: u32) -> String {
    format!("stub-devid:{devid}")
}

/// The fdset holding PV disk `devid`, if the stub domain has put it in one.
pub fn stub_fdset(fdsets: &[FdSet], devid: u32) -> Option<i64> {
    let opaque = stub_devid_opaque(devid);
    fdsets.iter().find(|set| set.fds.iter().any(|fd| fd.opaque.as_deref() == Some(opaque.as_str()))).map(|s| s.fdset_id)
}

/// A drive's medium (query-block's `inserted`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct Inserted {
    pub file: String,
    #[serde(default)]
    pub ro: bool,
}

/// One drive of query-block.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct Drive {
    #[serde(default)]
    pub device: String,
    #[serde(default)]
    pub qdev: Option<String>,
    #[serde(default)]
    pub removable: bool,
    #[serde(default)]
    pub locked: bool,
    #[serde(default)]
    pub tray_open: Option<bool>,
    #[serde(default)]
    pub inserted: Option<Inserted>,
}

impl Drive {
    /// Whether `id` names this drive (its qdev id, e.g. `ide-5632`, or its device name).
    pub fn is(&self, id: &str) -> bool {
        self.qdev.as_deref() == Some(id) || self.device == id
    }
}

/// query-block's return value.
pub fn parse_block(value: &Value) -> Result<Vec<Drive>, QmpError> {
    Vec::<Drive>::deserialize(value).map_err(|e| QmpError::Malformed(format!("query-block: {e}: {value}")))
}

/// query-status' run state (`running`, `paused`, ...).
pub fn parse_status(value: &Value) -> Result<String, QmpError> {
    value["status"].as_str().map(str::to_string).ok_or_else(|| QmpError::Malformed(format!("query-status: {value}")))
}

/// QMP's name for the IDE drive of disk `devid` (libxl's `ide-<devid>`).
pub fn ide_drive(devid: u32) -> String {
    format!("ide-{devid}")
}

/// Reads one line of at most [`LINE_MAX_BYTES`], without its terminator.
fn read_line(reader: &mut impl BufRead) -> Result<Vec<u8>, QmpError> {
    let mut line = Vec::new();
    let read = reader.take(LINE_MAX_BYTES as u64 + 1).read_until(b'\n', &mut line)?;
    if read == 0 {
        return Err(QmpError::Closed);
    }
    if line.last() != Some(&b'\n') {
        return Err(if line.len() > LINE_MAX_BYTES { QmpError::LineTooLong } else { QmpError::Closed });
    }
    while line.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        line.pop();
    }
    Ok(line)
}

/// A QMP session on a Unix socket, capabilities negotiated.
pub struct Client {
    writer: UnixStream,
    reader: BufReader<UnixStream>,
    next_id: u64,
    limit: Duration,
    /// The QEMU version the greeting claimed.
    pub version: (u64, u64, u64),
}

impl Client {
    /// Connects to `socket` (retrying for up to `limit` while it is busy or missing:
    /// vchan-socket-proxy serves one client at a time), reads the greeting and
    /// negotiates capabilities. Each later reply must come within `limit`.
    pub fn connect(socket: &str, limit: Duration) -> Result<Client, QmpError> {
        let deadline = Instant::now() + limit;
        let stream = loop {
            match UnixStream::connect(socket) {
                Ok(stream) => break stream,
                Err(e) if Instant::now() >= deadline => {
                    return Err(QmpError::Connect { socket: socket.to_string(), source: e });
                }
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        };
        stream.set_read_timeout(Some(limit))?;
        stream.set_write_timeout(Some(limit))?;
        let reader = BufReader::new(stream.try_clone()?);
        let mut client = Client { writer: stream, reader, next_id: 1, limit, version: (0, 0, 0) };
        match client.next_message()? {
            Message::Greeting { major, minor, micro } => client.version = (major, minor, micro),
            other => return Err(QmpError::Malformed(format!("expected the greeting, got {other:?}"))),
        }
        client.execute("qmp_capabilities", Value::Null)?;
        Ok(client)
    }

    fn next_message(&mut self) -> Result<Message, QmpError> {
        match read_line(&mut self.reader) {
            Ok(line) => parse_message(&line),
            Err(QmpError::Io(e))
                if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) =>
            {
                Err(QmpError::Timeout(self.limit.as_secs()))
            }
            Err(e) => Err(e),
        }
    }

    /// Runs `command` with `arguments` (Null for none); its return value, or the
    /// device model's refusal. Events that arrive meanwhile are dropped.
    pub fn execute(&mut self, command: &str, arguments: Value) -> Result<Value, QmpError> {
        let id = self.next_id;
        self.next_id += 1;
        let mut request = json!({ "execute": command, "id": id });
        if !arguments.is_null() {
            request["arguments"] = arguments;
        }
        self.writer.write_all(format!("{request}\r\n").as_bytes())?;
        for _ in 0..EVENTS_MAX {
            match self.next_message()? {
                Message::Event { .. } => continue,
                Message::Return { id: Some(got), value } if got == json!(id) => return Ok(value),
                Message::Error { id: Some(got), class, desc } if got == json!(id) => {
                    return Err(QmpError::Refused { command: command.to_string(), class, desc });
                }
                other => return Err(QmpError::Malformed(format!("a reply to another request: {other:?}"))),
            }
        }
        Err(QmpError::TooManyEvents(EVENTS_MAX))
    }

    pub fn query_fdsets(&mut self) -> Result<Vec<FdSet>, QmpError> {
        parse_fdsets(&self.execute("query-fdsets", Value::Null)?)
    }

    pub fn query_block(&mut self) -> Result<Vec<Drive>, QmpError> {
        parse_block(&self.execute("query-block", Value::Null)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_four_kinds_of_line() {
        let greeting = br#"{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": ""}, "capabilities": []}}"#;
        assert_eq!(parse_message(greeting).unwrap(), Message::Greeting { major: 7, minor: 2, micro: 0 });
        assert_eq!(
            parse_message(br#"{"return": {}, "id": 3}"#).unwrap(),
            Message::Return { id: Some(json!(3)), value: json!({}) }
        );
        assert_eq!(
            parse_message(br#"{"id":4,"error":{"class":"GenericError","desc":"Tray of device 'ide-5632' is locked"}}"#)
                .unwrap(),
            Message::Error {
                id: Some(json!(4)),
                class: "GenericError".into(),
                desc: "Tray of device 'ide-5632' is locked".into()
            }
        );
        let event = br#"{"timestamp":{"seconds":1,"microseconds":2},"event":"DEVICE_TRAY_MOVED","data":{"id":"ide-5632","tray-open":true}}"#;
        assert!(matches!(parse_message(event).unwrap(), Message::Event { name, .. } if name == "DEVICE_TRAY_MOVED"));
    }

    #[test]
    fn refuses_what_is_not_qmp() {
        for bad in
            [&b""[..], b"[]", b"{}", b"{\"QMP\":{}}", b"{\"error\":{\"class\":1}}", b"\xff", b"{\"event\":3}", b"nul"]
        {
            assert!(matches!(parse_message(bad), Err(QmpError::Malformed(_))), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    /// query-fdsets as our image answers it after libxl's argv put the CD in fdset 1
    /// and a swap put its new PV disk in fdset 3.
    const FDSETS: &str = r#"[{"fdset-id":1,"fds":[{"fd":3,"opaque":"stub-devid:768"}]},
        {"fdset-id":3,"fds":[{"fd":5,"opaque":"stub-devid:5632"}]},{"fdset-id":4,"fds":[{"fd":6}]}]"#;

    #[test]
    fn finds_the_fdset_of_a_pv_disk() {
        let fdsets = parse_fdsets(&serde_json::from_str(FDSETS).unwrap()).unwrap();
        assert_eq!(stub_fdset(&fdsets, 5632), Some(3));
        assert_eq!(stub_fdset(&fdsets, 768), Some(1));
        assert_eq!(stub_fdset(&fdsets, 5696), None);
        assert_eq!(stub_fdset(&[], 5632), None);
        assert!(parse_fdsets(&json!({"fdset-id":1})).is_err());
        assert!(parse_fdsets(&json!([{"fdset-id":"1","fds":[]}])).is_err());
    }

    #[test]
    fn reads_query_block() {
        let block = json!([
            {"device":"","qdev":"ide-768","removable":false,"locked":false,
             "inserted":{"file":"/dev/xvda","ro":false,"image":{"virtual-size":16777216}}},
            {"device":"","qdev":"ide-5632","removable":true,"locked":true,"tray_open":false,
             "inserted":{"file":"/dev/fdset/3","ro":true}},
            {"device":"ide1-cd1","removable":true,"locked":false,"tray_open":true}
        ]);
        let drives = parse_block(&block).unwrap();
        let cd = drives.iter().find(|d| d.is(&ide_drive(5632))).unwrap();
        assert!(cd.locked && cd.removable && cd.tray_open == Some(false));
        assert_eq!(cd.inserted, Some(Inserted { file: "/dev/fdset/3".into(), ro: true }));
        assert!(drives[2].is("ide1-cd1") && drives[2].inserted.is_none());
        assert!(parse_block(&json!([{"inserted":{}}])).is_err());
        assert_eq!(parse_status(&json!({"status":"running","running":true})).unwrap(), "running");
        assert!(parse_status(&json!({})).is_err());
    }

    #[test]
    fn lines_are_bounded() {
        let mut long = vec![b'x'; LINE_MAX_BYTES + 10];
        long.push(b'\n');
        assert!(matches!(read_line(&mut &long[..]), Err(QmpError::LineTooLong)));
        assert!(matches!(read_line(&mut &b"{}"[..]), Err(QmpError::Closed)));
        assert!(matches!(read_line(&mut &b""[..]), Err(QmpError::Closed)));
        assert_eq!(read_line(&mut &b"{\"return\":{}}\r\n"[..]).unwrap(), b"{\"return\":{}}");
    }
}
