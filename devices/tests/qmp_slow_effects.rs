//! Commands whose work is slow (`xen-save-devices-state` writing the state file to a
//! console) reply only once that work is done, with the reason when it failed, and
//! hold the messages that arrive meanwhile.

mod qmp_common;
use qmp_common as common;

use common::lines;
use devices::state_file;
use devices::vm::Vm;
use devices::vm::fuzz::test_vm;
use qmp::{MAX_HELD_MESSAGES, RunState, Session, SlowEffect, Timestamp, VersionInfo};
use serde_json::json;

const SAVE: &[u8] = b"{\"execute\":\"xen-save-devices-state\",\"id\":3,\"arguments\":{\"live\":false,\"filename\":\"/dev/fdset/1\"}}\r\n";
const NOW: Timestamp = Timestamp { seconds: 1_700_000_000, microseconds: 0 };

fn negotiated() -> (Vm, Session) {
    let mut vm = test_vm();
    let mut session = Session::open(&mut vm, &VersionInfo::default());
    session.feed(&mut vm, b"{\"execute\":\"qmp_capabilities\"}", NOW);
    session.take_output();
    (vm, session)
}

#[test]
fn the_save_reply_waits_for_the_state_file_to_be_written() {
    let (mut vm, mut session) = negotiated();
    session.feed(&mut vm, SAVE, NOW);
    // Paused for the save (STOP is out), but no reply yet.
    let out = lines(&session.take_output());
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(out[0]["event"], "STOP");
    assert!(session.is_waiting());
    let effect = session.take_effect().expect("the write is handed out");
    let SlowEffect::WriteStateFile { console, data } = effect else { panic!("not the state file: {effect:?}") };
    assert_eq!((console, data), (1, state_file::encode(&[])));
    assert!(session.take_effect().is_none(), "handed out once");
    session.complete(&mut vm, Ok(()), NOW);
    let out = lines(&session.take_output());
    assert_eq!(out.last().unwrap(), &json!({ "return": {}, "id": 3 }));
    assert_eq!(out[0]["event"], "RESUME", "a running VM resumes after the save");
    assert!(!session.is_waiting());
}

#[test]
fn a_failed_write_is_a_generic_error_with_the_reason() {
    let (mut vm, mut session) = negotiated();
    session.feed(&mut vm, b"{\"execute\":\"stop\"}", NOW);
    assert_eq!(session.take_effect(), Some(SlowEffect::Quiesce));
    session.complete(&mut vm, Ok(()), NOW);
    session.take_output();
    session.feed(&mut vm, SAVE, NOW);
    assert!(session.take_effect().is_some());
    session.complete(&mut vm, Err("console 1: the backend closed after 512 of 4096 bytes".into()), NOW);
    let out = lines(&session.take_output());
    let error = &out.last().unwrap()["error"];
    assert_eq!(error["class"], "GenericError");
    let desc = error["desc"].as_str().unwrap();
    assert!(desc.contains("saving Xen device state failed") && desc.contains("after 512 of 4096 bytes"), "{desc}");
    assert_eq!(out.last().unwrap()["id"], 3);
    // libxl had stopped the VM: it stays paused.
    assert_eq!(vm.run_state(), RunState::Paused);
}

#[test]
fn messages_that_arrive_meanwhile_run_in_order_afterwards() {
    let (mut vm, mut session) = negotiated();
    let mut input = SAVE.to_vec();
    input.extend_from_slice(b"{\"execute\":\"query-status\",\"id\":4}{\"execute\":\"cont\",\"id\":5}");
    session.feed(&mut vm, &input, NOW);
    session.feed(&mut vm, b"{\"execute\":\"query-status\",\"id\":6}", NOW);
    let out = lines(&session.take_output());
    assert!(out.iter().all(|line| line.get("id").is_none()), "nothing answered while the save waits: {out:?}");
    session.take_effect();
    session.complete(&mut vm, Ok(()), NOW);
    let ids: Vec<i64> = lines(&session.take_output()).iter().filter_map(|l| l["id"].as_i64()).collect();
    assert_eq!(ids, [3, 4, 5, 6]);
}

#[test]
fn a_flood_while_waiting_is_bounded_and_refused_in_order() {
    let (mut vm, mut session) = negotiated();
    session.feed(&mut vm, SAVE, NOW);
    for id in 0..MAX_HELD_MESSAGES + 10 {
        session.feed(&mut vm, format!("{{\"execute\":\"query-status\",\"id\":{}}}", 100 + id).as_bytes(), NOW);
    }
    session.take_effect();
    session.complete(&mut vm, Ok(()), NOW);
    let out = lines(&session.take_output());
    let answered = out.iter().filter(|l| l["id"].as_i64().is_some_and(|id| id >= 100)).count();
    assert_eq!(answered, MAX_HELD_MESSAGES);
    let last = &out.last().unwrap()["error"]["desc"];
    assert!(last.as_str().unwrap().starts_with("10 command(s) refused"), "{last}");
}

#[test]
fn a_second_save_cannot_start_while_one_waits() {
    let (mut vm, mut first) = negotiated();
    first.feed(&mut vm, SAVE, NOW);
    assert!(first.is_waiting());
    // A second connection to the same VM while the first one's write is out.
    let mut other = Session::new(&VersionInfo::default());
    other.feed(&mut vm, b"{\"execute\":\"qmp_capabilities\"}", NOW);
    other.feed(&mut vm, SAVE, NOW);
    let out = lines(&other.take_output());
    assert_eq!(out.last().unwrap()["error"]["desc"], "a device state save is already in progress");
}
