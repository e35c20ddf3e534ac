//! The protocol under bad and awkward input: split and merged messages, every limit,
//! ids of every JSON type, negotiation rules, and a few thousand random and mutated
//! inputs through the fuzz driver. After every error the session must still answer.

mod qmp_common;
use qmp_common as common;

use common::{Client, lines};
use devices::vm::fuzz::{HDC, Rng, fuzz_qmp_session, test_vm};
use qmp::check::StreamSummary;
use qmp::protocol::{MAX_MESSAGE_BYTES, MAX_NESTING};
use qmp::{RunState, Session, VersionInfo};
use serde_json::{Value, json};

/// A session that has seen `bad` still runs a command afterwards.
fn assert_survives(client: &mut Client) {
    let status = client.command("query-status", None);
    assert_eq!(status.ok()["status"], "running");
}

fn generic_error(reply: &Value) -> &str {
    assert_eq!(reply["error"]["class"], "GenericError", "{reply}");
    reply["error"]["desc"].as_str().unwrap()
}

const SEQUENCE: &[u8] = b"{\"execute\":\"qmp_capabilities\",\"id\":1}\r\n\
{\"execute\":\"query-status\",\"id\":2}\n\
{ \"execute\" : \"stop\", \"id\" : 3 }\
{\"execute\":\"eject\",\"arguments\":{\"id\":\"ide-5632\",\"force\":true},\"id\":4}\
  {\"execute\":\"cont\",\"id\":5}\r\n\
{\"execute\":\"query-fdsets\",\"id\":6}";

fn run_split(cuts: &[usize]) -> Vec<u8> {
    let mut vm = test_vm();
    let mut session = Session::open(&mut vm, &VersionInfo::default());
    let now = qmp::Timestamp::new(5, 6);
    let mut start = 0;
    for &cut in cuts.iter().chain([SEQUENCE.len()].iter()) {
        session.feed(&mut vm, &SEQUENCE[start..cut], now);
        // The `stop` waits for disk I/O in flight, of which there is none here.
        while session.take_effect().is_some() {
            session.complete(&mut vm, Ok(()), now);
        }
        start = cut;
    }
    session.take_output()
}

#[test]
fn split_and_merged_messages_give_the_same_output() {
    let whole = run_split(&[]);
    let replies = lines(&whole);
    // greeting, six replies, and STOP, tray, RESUME events
    assert_eq!(replies.len(), 10, "{replies:?}");
    let ids: Vec<i64> = replies.iter().filter_map(|line| line.get("id")).map(|id| id.as_i64().unwrap()).collect();
    assert_eq!(ids, [1, 2, 3, 4, 5, 6]);
    let byte_by_byte: Vec<usize> = (1..SEQUENCE.len()).collect();
    assert_eq!(run_split(&byte_by_byte), whole);
    let mut rng = Rng::new(7);
    for _ in 0..200 {
        let mut cuts: Vec<usize> = (0..rng.below(12)).map(|_| rng.below(SEQUENCE.len())).collect();
        cuts.sort();
        assert_eq!(run_split(&cuts), whole, "cuts {cuts:?}");
    }
}

#[test]
fn ids_of_every_json_type_are_echoed() {
    let mut client = Client::negotiated();
    for id in [
        json!(null),
        json!(true),
        json!(0),
        json!(-17),
        json!(18446744073709551615u64),
        json!(1.5),
        json!("libxl"),
        json!("é \" \\ \u{1}"),
        json!([1, "two", [3], {}]),
        json!({ "z": 1, "a": { "nested": [null] } }),
    ] {
        let request = format!("{{\"execute\":\"query-status\",\"id\":{id}}}");
        let reply = client.exchange(request.as_bytes()).reply;
        assert_eq!(reply["id"], id, "{request}");
        // and on an error reply too
        let request = format!("{{\"execute\":\"no-such-command\",\"id\":{id}}}");
        let reply = client.exchange(request.as_bytes()).reply;
        assert_eq!(reply["id"], id);
        assert_eq!(reply["error"]["class"], "CommandNotFound");
    }
    // object ids keep their member order on the wire
    let now = client.now;
    client.session.feed(&mut client.vm, br#"{"id":{"z":1,"a":2},"execute":"cont"}"#, now);
    assert_eq!(client.session.take_output(), b"{\"return\":{},\"id\":{\"z\":1,\"a\":2}}\r\n");
}

#[test]
fn negotiation_rules() {
    let mut client = Client::new();
    for command in ["query-status", "query-version", "stop", "nonsense"] {
        let exchange = client.exchange(format!("{{\"execute\":\"{command}\",\"id\":9}}").as_bytes());
        assert_eq!(exchange.error(), ("CommandNotFound", "Expecting capabilities negotiation with 'qmp_capabilities'"));
        assert_eq!(exchange.reply["id"], 9);
    }
    assert_eq!(client.vm.run_state(), RunState::Running, "stop was not run");
    // bad arguments to qmp_capabilities are argument errors, not negotiation errors
    let bad = client.command("qmp_capabilities", Some(json!({ "enable": ["oob"] })));
    assert_eq!(bad.error(), ("GenericError", "Capability oob not available"));
    let bad = client.command("qmp_capabilities", Some(json!({ "enable": ["turbo"] })));
    assert_eq!(bad.error(), ("GenericError", "Parameter 'null' does not accept value 'turbo'"));
    let bad = client.command("qmp_capabilities", Some(json!({ "verbose": true })));
    assert_eq!(bad.error(), ("GenericError", "Parameter 'verbose' is unexpected"));
    assert!(!client.session.is_negotiated());
    assert_eq!(client.command("qmp_capabilities", Some(json!({ "enable": [] }))).ok(), &json!({}));
    let again = client.command("qmp_capabilities", None);
    assert_eq!(again.error(), ("CommandNotFound", "Capabilities negotiation is already complete, command ignored"));
    assert_survives(&mut client);
}

#[test]
fn events_wait_for_negotiation() {
    let mut client = Client::new();
    client.vm.guest_move_tray(HDC, true, client.now).unwrap();
    client.session.deliver_events(&mut client.vm);
    assert!(client.read().is_empty(), "no events before qmp_capabilities");
    client.negotiate();
    client.vm.guest_move_tray(HDC, false, qmp::Timestamp::new(42, 7)).unwrap();
    client.session.deliver_events(&mut client.vm);
    let events = client.read();
    assert_eq!(
        events,
        [json!({
            "event": "DEVICE_TRAY_MOVED",
            "data": { "device": "ide-5632", "id": "ide-5632", "tray-open": false },
            "timestamp": { "seconds": 42, "microseconds": 7 },
        })]
    );
}

#[test]
fn request_shape_errors() {
    let mut client = Client::negotiated();
    for (request, desc) in [
        (&b"[1,2]"[..], "QMP input must be a JSON object"),
        (b"\"execute\"", "QMP input must be a JSON object"),
        (b"42 ", "QMP input must be a JSON object"),
        (b"null ", "QMP input must be a JSON object"),
        (b"{}", "QMP input lacks member 'execute'"),
        (b"{\"id\":1}", "QMP input lacks member 'execute'"),
        (b"{\"execute\":7}", "QMP input member 'execute' must be a string"),
        (b"{\"execute\":\"stop\",\"arguments\":[]}", "QMP input member 'arguments' must be an object"),
        (b"{\"execute\":\"stop\",\"argument\":{}}", "QMP input member 'argument' is unexpected"),
        (b"{\"exec-oob\":\"stop\"}", "QMP input member 'exec-oob' is unexpected"),
        (b"{\"execute\":\"stop\",\"control\":{}}", "QMP input member 'control' is unexpected"),
    ] {
        let reply = client.exchange(request).reply;
        assert_eq!(generic_error(&reply), desc, "{}", String::from_utf8_lossy(request));
    }
    // the id is echoed even when the rest of the request is wrong
    let reply = client.exchange(b"{\"id\":\"x\",\"execute\":\"stop\",\"extra\":1}").reply;
    assert_eq!(reply["id"], "x");
    assert_eq!(client.vm.run_state(), RunState::Running);
    assert_survives(&mut client);
}

#[test]
fn argument_errors_use_qemus_wording() {
    let mut client = Client::negotiated();
    for (command, arguments, desc) in [
        ("eject", json!({ "id": 5632 }), "Invalid parameter type for 'id', expected: string"),
        ("eject", json!({ "id": "ide-5632", "force": "yes" }), "Invalid parameter type for 'force', expected: boolean"),
        ("eject", json!({ "id": "ide-5632", "forced": true }), "Parameter 'forced' is unexpected"),
        ("eject", json!({ "force": 1 }), "Invalid parameter type for 'force', expected: boolean"),
        ("eject", json!({}), "Need exactly one of 'device' and 'id'"),
        ("blockdev-change-medium", json!({ "id": "ide-5632" }), "Parameter 'filename' is missing"),
        ("remove-fd", json!({}), "Parameter 'fdset-id' is missing"),
        ("remove-fd", json!({ "fdset-id": "0" }), "Invalid parameter type for 'fdset-id', expected: integer"),
        ("remove-fd", json!({ "fdset-id": 0.5 }), "Invalid parameter type for 'fdset-id', expected: integer"),
        ("remove-fd", json!({ "fdset-id": 9 }), "File descriptor named 'fdset-id:9' not found"),
        ("remove-fd", json!({ "fdset-id": 0, "fd": 99 }), "File descriptor named 'fdset-id:0, fd:99' not found"),
        ("add-fd", json!({ "fdset-id": "one" }), "Invalid parameter type for 'fdset-id', expected: integer"),
        ("add-fd", json!({ "fdset-id": 1, "opaque": "x" }), "No file descriptor supplied via SCM_RIGHTS"),
        ("add-fd", json!({}), "No file descriptor supplied via SCM_RIGHTS"),
        ("xen-set-global-dirty-log", json!({}), "Parameter 'enable' is missing"),
        (
            "xen-set-global-dirty-log",
            json!({ "enable": null }),
            "Invalid parameter type for 'enable', expected: boolean",
        ),
        (
            "xen-save-devices-state",
            json!({ "filename": "/dev/fdset/0" }),
            "Unable to open /dev/fdset/0: state files go to a console of the stub domain, not to a disk",
        ),
        (
            "xen-save-devices-state",
            json!({ "filename": "/tmp/save" }),
            "Unable to open /tmp/save: No such file or directory",
        ),
        (
            "xen-load-devices-state",
            json!({ "filename": "/dev/fdset/1" }),
            "Cannot update device state while vm is running",
        ),
        ("query-status", json!({ "verbose": true }), "Parameter 'verbose' is unexpected"),
    ] {
        let exchange = client.command(command, Some(arguments.clone()));
        assert_eq!(generic_error(&exchange.reply), desc, "{command} {arguments}");
    }
    let missing = client.command("frobnicate", None);
    assert_eq!(missing.error(), ("CommandNotFound", "The command frobnicate has not been found"));
    // a failed save of a running VM still resumed it
    assert_eq!(client.vm.run_state(), RunState::Running);
    assert_survives(&mut client);
}

#[test]
fn json_errors_and_limits() {
    let mut client = Client::negotiated();
    let mut cases: Vec<(Vec<u8>, &str)> = vec![
        (b"{\"execute\":\"stop\"".to_vec(), ""),
        (b"}".to_vec(), "JSON parse error, expecting value"),
        (b"{\"execute\" \"stop\"}".to_vec(), "JSON parse error"),
        // 0xff drops the partial message: a client resynchronises with it
        (b"{\"execute\":\"st\xff".to_vec(), "JSON parse error, stray '\\xff'"),
        (b"\xff".to_vec(), "JSON parse error, stray '\\xff'"),
        (b"{\"execute\":\"\xc3\x28\"}".to_vec(), "JSON parse error"),
        (b"{\"execute\":\"stop\",\"execute\":\"cont\"}".to_vec(), "JSON parse error, duplicate key 'execute'"),
        (b"{'execute':'stop'}".to_vec(), "JSON parse error"),
        (b"{\"execute\":\"stop\",\"id\":1e999}".to_vec(), "JSON parse error"),
        (b"\x01".to_vec(), "JSON parse error, stray '\\x01'"),
        (b"{\"execute\":\"a\nb\"}".to_vec(), "JSON parse error, stray '\\x0a'"),
    ];
    // an unterminated message would swallow what follows: end it with a 0xff reset
    cases[0].0.push(0xff);
    cases[0].1 = "JSON parse error, stray '\\xff'";
    let mut big = b"{\"execute\":\"query-status\",\"id\":\"".to_vec();
    big.extend(std::iter::repeat_n(b'x', MAX_MESSAGE_BYTES));
    big.extend(b"\"}");
    cases.push((big, "JSON token size limit exceeded"));
    let mut deep = b"{\"execute\":\"query-status\",\"id\":".to_vec();
    deep.extend(std::iter::repeat_n(b'[', MAX_NESTING));
    deep.extend(std::iter::repeat_n(b']', MAX_NESTING));
    deep.push(b'}');
    cases.push((deep, "JSON nesting depth limit exceeded"));
    for (input, desc) in cases {
        let replies = client.send(&input);
        assert_eq!(replies.len(), 1, "{:?} -> {replies:?}", String::from_utf8_lossy(&input));
        let reply = &replies[0];
        assert!(reply.get("id").is_none(), "no id can be read from bad JSON: {reply}");
        assert!(generic_error(reply).starts_with(desc), "{reply} vs {desc}");
        assert!(!client.session.has_partial_input());
        assert_survives(&mut client);
    }
    // exactly at the limits is fine
    let mut deep = b"{\"execute\":\"query-status\",\"id\":".to_vec();
    deep.extend(std::iter::repeat_n(b'[', MAX_NESTING - 1));
    deep.extend(std::iter::repeat_n(b']', MAX_NESTING - 1));
    deep.push(b'}');
    assert!(client.exchange(&deep).reply.get("return").is_some());
}

#[test]
fn quit_ends_the_session() {
    let mut client = Client::negotiated();
    let replies = client.send(b"{\"execute\":\"quit\",\"id\":1}{\"execute\":\"stop\",\"id\":2}");
    assert_eq!(replies, [json!({ "return": {}, "id": 1 })]);
    assert!(client.session.is_closed() && client.vm.quit_requested());
    assert!(client.send(b"{\"execute\":\"stop\"}").is_empty());
    assert_eq!(client.vm.run_state(), RunState::Running, "the stop after quit was not run");
}

#[test]
fn query_commands_lists_the_command_set() {
    let mut client = Client::negotiated();
    let names: Vec<String> = client
        .command("query-commands", None)
        .ok()
        .as_array()
        .unwrap()
        .iter()
        .map(|entry| entry["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, qmp::commands::COMMANDS);
    for name in qmp::commands::COMMANDS.into_iter().skip(1) {
        let exchange = client.command(name, None);
        assert_ne!(exchange.reply["error"]["class"], "CommandNotFound", "{name}");
        if name == "quit" {
            break;
        }
    }
}

/// Valid libxl-like requests the mutator starts from.
const CORPUS: &[&[u8]] = &[
    b"{\"execute\":\"qmp_capabilities\",\"id\":2020372736}\r\n",
    b"{\"execute\":\"query-version\",\"id\":2020372737}\r\n",
    b"{\"execute\":\"eject\",\"id\":2020372738,\"arguments\":{\"id\":\"ide-5632\"}}\r\n",
    b"{\"execute\":\"query-fdsets\",\"id\":2020372739}\r\n",
    b"{\"execute\":\"remove-fd\",\"id\":2020372740,\"arguments\":{\"fdset-id\":0}}\r\n",
    b"{\"execute\":\"blockdev-change-medium\",\"id\":2020372741,\"arguments\":{\"id\":\"ide-5632\",\"filename\":\"/dev/fdset/0\",\"format\":\"host_device\"}}\r\n",
    b"{\"execute\":\"xen-set-global-dirty-log\",\"id\":1,\"arguments\":{\"enable\":true}}\r\n",
    b"{\"execute\":\"stop\",\"id\":2}\r\n",
    b"{\"execute\":\"xen-save-devices-state\",\"id\":3,\"arguments\":{\"live\":false,\"filename\":\"/dev/fdset/1\"}}\r\n",
    b"{\"execute\":\"xen-load-devices-state\",\"arguments\":{\"filename\":\"/dev/fdset/1\"}}",
    b"{\"execute\":\"blockdev-open-tray\",\"arguments\":{\"id\":\"ide-5632\",\"force\":true}}",
    b"{\"execute\":\"blockdev-close-tray\",\"arguments\":{\"device\":\"ide-5632\"}}",
    b"{\"execute\":\"query-block\"}{\"execute\":\"query-status\"}{\"execute\":\"cont\"}",
    b"{\"execute\":\"add-fd\",\"arguments\":{\"fdset-id\":1,\"opaque\":\"x\"}}",
    b"{\"execute\":\"query-commands\"}",
];

const TOKENS: &[&[u8]] = &[
    b"{",
    b"}",
    b"[",
    b"]",
    b"\"",
    b":",
    b",",
    b"\\",
    b"\\u0000",
    b"\\ud800",
    b"null",
    b"-0",
    b"1e309",
    b"\xff",
    b"\xc3",
    b"\x00",
    b"\n",
    b"\r\n",
    b"'",
    b"{\"execute\":",
    b"\"id\":",
    b"{\"execute\":\"qmp_capabilities\"}",
];

fn mutate(rng: &mut Rng, input: &mut Vec<u8>) {
    for _ in 0..1 + rng.below(6) {
        let at = rng.below(input.len() + 1);
        match rng.below(6) {
            0 if !input.is_empty() => {
                let at = at.min(input.len() - 1);
                input[at] ^= 1 << rng.below(8);
            }
            1 => input.truncate(at),
            2 => {
                let token = TOKENS[rng.below(TOKENS.len())];
                input.splice(at..at, token.iter().copied());
            }
            3 if at < input.len() => {
                let end = (at + rng.below(16)).min(input.len());
                input.drain(at..end);
            }
            4 => {
                let other = CORPUS[rng.below(CORPUS.len())];
                input.splice(at..at, other.iter().copied());
            }
            _ => input.insert(at, rng.next_u64() as u8),
        }
    }
}

#[test]
fn random_and_mutated_inputs_never_break_the_stream() {
    let mut rng = Rng::new(0x5eed);
    let mut total = StreamSummary::default();
    for round in 0..4000 {
        let mut input = vec![rng.next_u64() as u8];
        match round % 4 {
            0 => input.extend((0..rng.below(300)).map(|_| rng.next_u64() as u8)),
            1 => {
                let structural = b"{}[]\":,\\ abex1-\xff\n";
                input.extend((0..rng.below(300)).map(|_| structural[rng.below(structural.len())]));
            }
            _ => {
                for _ in 0..1 + rng.below(5) {
                    input.extend_from_slice(CORPUS[rng.below(CORPUS.len())]);
                }
                mutate(&mut rng, &mut input);
            }
        }
        match fuzz_qmp_session(&input) {
            Ok(summary) => {
                total.returns += summary.returns;
                total.errors += summary.errors;
                total.events += summary.events;
            }
            Err(problem) => {
                panic!("round {round}: {problem}\ninput: {:?}", String::from_utf8_lossy(&input))
            }
        }
    }
    // The mutated libxl requests reach the commands, not only the parser.
    assert!(total.returns > 2000 && total.errors > 2000 && total.events > 200, "{total:?}");
}
