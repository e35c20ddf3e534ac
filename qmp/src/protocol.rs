//! One QMP connection as QEMU's monitor runs it (monitor/qmp.c, qapi/qmp-dispatch.c).
//!
//! A [`Session`] starts with the greeting in its output. Bytes from the client go to
//! [`Session::feed`] in whatever pieces they arrive; every complete message is checked,
//! run and answered, and the answers (with any events the command caused, which come
//! first, as in QEMU) are appended to the output, each followed by `\r\n`: libxl cuts
//! replies at `\r\n` (libxl_qmp.c), which is what QEMU's monitor writes.
//!
//! The rules, with QEMU's wording:
//! - Until `qmp_capabilities` succeeds, every other command is refused with
//!   `CommandNotFound` "Expecting capabilities negotiation with 'qmp_capabilities'", and
//!   no events are sent; afterwards `qmp_capabilities` is `CommandNotFound`
//!   "Capabilities negotiation is already complete, command ignored".
//! - A request is an object with `execute` (a string), optionally `arguments` (an
//!   object) and `id` (any JSON value, echoed in the reply). Anything else is a
//!   `GenericError`: "QMP input must be a JSON object", "QMP input member 'x' is
//!   unexpected", "QMP input member 'execute' must be a string", "QMP input member
//!   'arguments' must be an object", "QMP input lacks member 'execute'".
//! - Input that is not JSON is a `GenericError` starting "JSON parse error" (or a limit
//!   message: [`MAX_MESSAGE_BYTES`], [`MAX_NESTING`]), without `id`, since none could
//!   be read. Stray bytes cost the message they are in; a 0xFF byte drops any partial
//!   message, so a client can always resynchronise.
//! - Commands run one at a time, in order. A command with slow work
//!   ([`Outcome::Pending`], e.g. `xen-save-devices-state` writing to a console) holds
//!   the session: [`Session::take_effect`] hands the work to the caller, messages that
//!   arrive meanwhile wait (at most [`MAX_HELD_MESSAGES`]; more are refused in order),
//!   and [`Session::complete`] writes the reply and runs what waited.
//! - Commands other than `qmp_capabilities` go to [`commands::execute`], which runs them
//!   against the caller's [`Monitor`]; after a `quit` that succeeded the session reads
//!   nothing more.

mod framer;

use alloc::collections::VecDeque;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use serde::Serialize;

use crate::args::Args;
use crate::commands::{self, Monitor, Outcome, SlowEffect};
use crate::error::{ErrorClass, QmpError};
use crate::json::{self, Object, Value};
use framer::{Frame, Framer};
pub use framer::{MAX_MESSAGE_BYTES, MAX_NESTING};

/// A point in wall-clock time, as event stamps carry it. The caller reads the clock.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Timestamp {
    pub seconds: i64,
    pub microseconds: i64,
}

impl Timestamp {
    pub fn new(seconds: i64, microseconds: i64) -> Timestamp {
        Timestamp { seconds, microseconds }
    }
}

/// `{"major":..,"minor":..,"micro":..}` (serialised in the order QEMU's greeting shows).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct VersionTriple {
    pub micro: u32,
    pub minor: u32,
    pub major: u32,
}

/// What the greeting and `query-version` announce.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct VersionInfo {
    pub qemu: VersionTriple,
    pub package: String,
}

/// The QEMU version announced by default: 9.2.0.
///
/// libxl reads it from the greeting and switches on it: from 2.8 it names drives by
/// `id` (`eject`, `blockdev-change-medium`) instead of the deprecated `device`, and
/// from 2.11 it sends `live` with `xen-save-devices-state` (libxl_disk.c, libxl_qmp.c;
/// no other thresholds in Xen 4.14 to 4.22). 9.2 is the last release whose
/// `query-block` shape this server reproduces (10.0 added `active`, 10.1 `children`).
pub const QEMU_VERSION: VersionTriple = VersionTriple { major: 9, minor: 2, micro: 0 };

impl Default for VersionInfo {
    fn default() -> VersionInfo {
        VersionInfo { qemu: QEMU_VERSION, package: String::from(concat!("rust-stubdom ", env!("CARGO_PKG_VERSION"))) }
    }
}

#[derive(Serialize)]
struct Greeting<'a> {
    #[serde(rename = "QMP")]
    qmp: GreetingBody<'a>,
}

#[derive(Serialize)]
struct GreetingBody<'a> {
    version: &'a VersionInfo,
    capabilities: [&'static str; 0],
}

#[derive(Serialize)]
struct ReturnReply<'a> {
    #[serde(rename = "return")]
    value: &'a serde_json::Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a Value>,
}

#[derive(Serialize)]
struct ErrorReply<'a> {
    error: &'a QmpError,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a Value>,
}

#[derive(Serialize)]
struct EventMessage {
    event: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<serde_json::Value>,
    timestamp: Timestamp,
}

/// Capabilities QEMU defines; none is offered (out-of-band needs an I/O thread).
const CAPABILITIES: [&str; 1] = ["oob"];

/// Messages kept while a command waits for its slow work; more are answered with an
/// error (in their turn), never buffered without bound.
pub const MAX_HELD_MESSAGES: usize = 32;

/// A command whose reply waits for its slow work.
#[derive(Debug)]
struct Waiting {
    id: Option<Value>,
    /// the work, until the caller takes it
    effect: Option<SlowEffect>,
    /// whether the work is a save (its completion goes through the monitor)
    save: bool,
}

/// One client connection.
#[derive(Debug)]
pub struct Session {
    /// what the greeting announced, and `query-version` reports
    version: VersionInfo,
    framer: Framer,
    output: Vec<u8>,
    negotiated: bool,
    closed: bool,
    waiting: Option<Waiting>,
    held: VecDeque<Frame>,
    /// messages refused because `held` was full, not yet reported
    refused: usize,
}

impl Session {
    /// A connection whose output starts with the greeting
    /// `{"QMP":{"version":{"qemu":{..},"package":".."},"capabilities":[]}}`.
    pub fn new(version: &VersionInfo) -> Session {
        let mut session = Session {
            version: version.clone(),
            framer: Framer::new(),
            output: Vec::new(),
            negotiated: false,
            closed: false,
            waiting: None,
            held: VecDeque::new(),
            refused: 0,
        };
        session.write(&Greeting { qmp: GreetingBody { version, capabilities: [] } });
        session
    }

    /// A new connection to `monitor`: drops the events nobody was connected to receive
    /// and returns the session, whose output starts with the greeting.
    pub fn open<M: Monitor + ?Sized>(monitor: &mut M, version: &VersionInfo) -> Session {
        monitor.take_events();
        Session::new(version)
    }

    /// Takes bytes from the client: runs every message they complete against `monitor`
    /// and queues the replies. Events the commands cause are stamped `now`. Nothing is
    /// read after `quit`.
    pub fn feed<M: Monitor + ?Sized>(&mut self, monitor: &mut M, input: &[u8], now: Timestamp) {
        let mut frames = Vec::new();
        for &byte in input {
            if self.closed {
                return;
            }
            self.framer.push(byte, &mut frames);
            for frame in frames.drain(..) {
                if self.waiting.is_some() || !self.held.is_empty() {
                    self.hold(frame);
                } else {
                    self.run_frame(monitor, frame, now);
                }
            }
        }
    }

    fn run_frame<M: Monitor + ?Sized>(&mut self, monitor: &mut M, frame: Frame, now: Timestamp) {
        match frame {
            Frame::Message(bytes) => self.handle(monitor, &bytes, now),
            Frame::Error(desc) => self.write_error(None, &QmpError::generic(desc)),
        }
    }

    fn hold(&mut self, frame: Frame) {
        if self.held.len() < MAX_HELD_MESSAGES {
            self.held.push_back(frame);
        } else {
            self.refused += 1;
        }
    }

    /// Whether a command waits for its slow work (its reply is not written yet).
    pub fn is_waiting(&self) -> bool {
        self.waiting.is_some()
    }

    /// The slow work of the command that waits, for the caller to carry out (once).
    pub fn take_effect(&mut self) -> Option<SlowEffect> {
        self.waiting.as_mut().and_then(|w| w.effect.take())
    }

    /// The slow work is done (`Err` says why it failed): writes the waiting command's
    /// reply, then runs the messages that arrived meanwhile.
    pub fn complete<M: Monitor + ?Sized>(&mut self, monitor: &mut M, result: Result<(), String>, now: Timestamp) {
        let Some(waiting) = self.waiting.take() else { return };
        let reply = commands::complete_effect(monitor, waiting.save, result, now);
        self.finish(monitor, waiting.id.as_ref(), reply, false);
        while self.waiting.is_none() && !self.closed {
            let Some(frame) = self.held.pop_front() else { break };
            self.run_frame(monitor, frame, now);
        }
        if self.waiting.is_none() && self.held.is_empty() && self.refused > 0 {
            let refused = core::mem::take(&mut self.refused);
            let error = QmpError::generic(format!(
                "{refused} command(s) refused: more than {MAX_HELD_MESSAGES} arrived while one was in progress"
            ));
            self.write_error(None, &error);
        }
    }

    /// Moves the monitor's pending events (from hooks such as the guest moving a tray)
    /// to the output; before negotiation they are dropped, as QEMU does.
    pub fn deliver_events<M: Monitor + ?Sized>(&mut self, monitor: &mut M) {
        for timed in monitor.take_events() {
            if self.negotiated {
                let event = &timed.event;
                let timestamp = timed.timestamp;
                self.write(&EventMessage { event: event.name(), data: event.data(), timestamp });
            }
        }
    }

    /// Bytes waiting to be sent to the client.
    pub fn output(&self) -> &[u8] {
        &self.output
    }

    /// Drops the first `len` output bytes (those sent).
    pub fn consume_output(&mut self, len: usize) {
        self.output.drain(..len.min(self.output.len()));
    }

    /// Takes all waiting output.
    pub fn take_output(&mut self) -> Vec<u8> {
        core::mem::take(&mut self.output)
    }

    /// Whether `qmp_capabilities` has succeeded.
    pub fn is_negotiated(&self) -> bool {
        self.negotiated
    }

    /// Whether the client sent `quit`: the connection has nothing more to say.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Whether part of a message has been received and not yet completed.
    pub fn has_partial_input(&self) -> bool {
        self.framer.is_partial()
    }

    fn write(&mut self, message: &impl Serialize) {
        match serde_json::to_vec(message) {
            Ok(bytes) => self.output.extend_from_slice(&bytes),
            // Unreachable with the types above (string keys, finite numbers); never panic.
            Err(_) => self
                .output
                .extend_from_slice(br#"{"error":{"class":"GenericError","desc":"reply could not be encoded"}}"#),
        }
        self.output.extend_from_slice(b"\r\n");
    }

    fn write_error(&mut self, id: Option<&Value>, error: &QmpError) {
        self.write(&ErrorReply { error, id });
    }

    fn handle<M: Monitor + ?Sized>(&mut self, monitor: &mut M, bytes: &[u8], now: Timestamp) {
        let request = match json::from_slice(bytes) {
            Ok(Value::Object(request)) => request,
            Ok(_) => {
                let error = QmpError::generic("QMP input must be a JSON object");
                return self.write_error(None, &error);
            }
            Err(error) => {
                let error = QmpError::generic(format!("JSON parse error, {error}"));
                return self.write_error(None, &error);
            }
        };
        let id = request.get("id");
        let mut quits = false;
        let empty = Object::default();
        let result = check_request(&request).and_then(|(command, arguments)| {
            let arguments = arguments.unwrap_or(&empty);
            if command == "qmp_capabilities" {
                self.capabilities(arguments).map(|value| Outcome::Done(Ok(value)))
            } else if !self.negotiated {
                Err(QmpError::new(
                    ErrorClass::CommandNotFound,
                    "Expecting capabilities negotiation with 'qmp_capabilities'",
                ))
            } else {
                quits = command == "quit";
                Ok(commands::execute(monitor, &self.version, command, arguments, now))
            }
        });
        let result = match result {
            Err(error) => Err(error),
            Ok(Outcome::Done(result)) => result,
            Ok(Outcome::Pending(effect)) => {
                // Events so far (STOP) go out now; the reply waits for the effect.
                self.deliver_events(monitor);
                let save = matches!(effect, SlowEffect::WriteStateFile { .. });
                self.waiting = Some(Waiting { id: id.cloned(), effect: Some(effect), save });
                return;
            }
        };
        let closes = quits && result.is_ok();
        self.finish(monitor, id, result, closes);
    }

    /// Writes a command's events and reply; after a `quit` that succeeded (`closes`)
    /// the session reads nothing more.
    fn finish<M: Monitor + ?Sized>(
        &mut self,
        monitor: &mut M,
        id: Option<&Value>,
        result: Result<serde_json::Value, QmpError>,
        closes: bool,
    ) {
        self.deliver_events(monitor);
        match result {
            Ok(value) => self.write(&ReturnReply { value: &value, id }),
            Err(error) => self.write_error(id, &error),
        }
        if closes {
            self.closed = true;
        }
    }

    /// `qmp_capabilities {enable?: ["oob"]}`.
    fn capabilities(&mut self, arguments: &Object) -> Result<serde_json::Value, QmpError> {
        let mut args = Args::new(arguments);
        let enable = args.opt_enum_list("enable", &CAPABILITIES)?;
        args.finish()?;
        if self.negotiated {
            return Err(QmpError::new(
                ErrorClass::CommandNotFound,
                "Capabilities negotiation is already complete, command ignored",
            ));
        }
        if let Some(wanted) = enable.filter(|wanted| !wanted.is_empty()) {
            let names: Vec<&str> = wanted.iter().filter_map(|index| CAPABILITIES.get(*index).copied()).collect();
            return Err(QmpError::generic(format!("Capability {} not available", names.join(", "))));
        }
        self.negotiated = true;
        Ok(serde_json::Value::Object(serde_json::Map::new()))
    }
}

/// QEMU's qmp_dispatch_check_obj: the command name and arguments of a request.
fn check_request(request: &Object) -> Result<(&str, Option<&Object>), QmpError> {
    let mut command = None;
    for (name, value) in request.iter() {
        match name {
            "execute" => {
                let text =
                    value.as_str().ok_or_else(|| QmpError::generic("QMP input member 'execute' must be a string"))?;
                command = Some(text);
            }
            "arguments" => {
                if value.as_object().is_none() {
                    return Err(QmpError::generic("QMP input member 'arguments' must be an object"));
                }
            }
            "id" => {}
            _ => return Err(QmpError::generic(format!("QMP input member '{name}' is unexpected"))),
        }
    }
    let command = command.ok_or_else(|| QmpError::generic("QMP input lacks member 'execute'"))?;
    Ok((command, request.get("arguments").and_then(Value::as_object)))
}
