//! ckpt/1, the checkpoint protocol between stubctl and an external agent (reference
//! dom0-helper.md §5.3; MTC's key names, xapi's mtc.ml): the decisions of one
//! checkpoint cycle and the xenstore writes that announce them, without I/O, so that
//! every path (acknowledgement, late acknowledgement, abort at each step, timeout) is
//! tested on the host with a simulated agent.
//!
//! Keys under `/local/domain/<guest>/migration`: stubctl writes `seq` (first in a
//! cycle), `progress`, `error_info`, `entering_fg` ("1": about to suspend), `file`
//! and `status` (always last: idle, pending, success, failure, cancelled); the agent
//! writes `entering_fg_acked` and `abort` ("1"). An abort wins over an
//! acknowledgement; an abort pending before a cycle starts refuses it; an honoured
//! abort is removed again (edge-triggered per cycle).

use std::time::Duration;

/// The protocol's base path for guest `domid`.
pub fn base(domid: u32) -> String {
    format!("/local/domain/{domid}/migration")
}

/// How long the agent has to acknowledge a suspend by default.
pub const ACK_LIMIT: Duration = Duration::from_secs(60);
/// libxc's built-in precopy policy: stop and copy after this many iterations, or once
/// fewer pages than this are dirty.
const PRECOPY_MAX_ITERATIONS: u32 = 5;
const PRECOPY_DIRTY_THRESHOLD: i64 = 50;

/// `status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Pending,
    Success,
    Failure,
    Cancelled,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Success => "success",
            Status::Failure => "failure",
            Status::Cancelled => "cancelled",
        }
    }
}

/// A change to a key under [`base`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    Write(&'static str, String),
    Rm(&'static str),
}

/// What the agent has written, read afresh each time it matters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Agent {
    pub acked: bool,
    pub abort: bool,
}

impl Agent {
    /// The agent's keys as xenstore holds them (anything but "1" is no).
    pub fn from_values(entering_fg_acked: Option<&str>, abort: Option<&str>) -> Agent {
        Agent { acked: entering_fg_acked == Some("1"), abort: abort == Some("1") }
    }
}

/// How a cycle ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The checkpoint is in `file`.
    Committed { file: String },
    /// The agent aborted (`why` says when).
    Cancelled { why: String },
    /// No acknowledgement within the limit.
    TimedOut { limit: Duration },
    /// The save itself failed.
    Failed { why: String },
}

/// The start of cycle `seq`: refused (with what to write) while an abort is pending,
/// else the writes that announce it.
pub fn start(agent: Agent, seq: u64) -> Result<Vec<Op>, Vec<Op>> {
    if agent.abort {
        return Err(vec![
            Op::Write("error_info", "abort pending".to_string()),
            Op::Rm("abort"),
            Op::Write("status", Status::Cancelled.as_str().to_string()),
        ]);
    }
    Ok(vec![
        Op::Write("seq", seq.to_string()),
        Op::Rm("entering_fg"),
        Op::Rm("entering_fg_acked"),
        Op::Rm("error_info"),
        Op::Rm("file"),
        Op::Write("progress", "0".to_string()),
        Op::Write("status", Status::Pending.as_str().to_string()),
    ])
}

/// libxc's `precopy_policy` answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precopy {
    Abort,
    Continue,
    StopAndCopy,
}

/// The precopy decision after `iteration` with `dirty_count` pages dirty (-1: not
/// known yet): an abort ends the save, else libxc's built-in rule.
pub fn precopy(agent: Agent, iteration: u32, dirty_count: i64) -> Precopy {
    if agent.abort {
        Precopy::Abort
    } else if iteration >= PRECOPY_MAX_ITERATIONS || (0..PRECOPY_DIRTY_THRESHOLD).contains(&dirty_count) {
        Precopy::StopAndCopy
    } else {
        Precopy::Continue
    }
}

/// The write that asks the agent to acknowledge the suspend.
pub fn request_suspend() -> Vec<Op> {
    vec![Op::Write("entering_fg", "1".to_string())]
}

/// While waiting for the acknowledgement.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AckWait {
    /// Nothing yet: wait on.
    Wait,
    /// Acknowledged: suspend the guest.
    Suspend,
    /// Aborted (also when acknowledged at the same time).
    Abort,
    /// Nothing within the limit.
    TimedOut,
}

/// The decision after `waited` of `limit`, given what the agent has written.
pub fn ack_wait(agent: Agent, waited: Duration, limit: Duration) -> AckWait {
    if agent.abort {
        AckWait::Abort
    } else if agent.acked {
        AckWait::Suspend
    } else if waited >= limit {
        AckWait::TimedOut
    } else {
        AckWait::Wait
    }
}

/// Whether a checkpoint whose save succeeded may be committed: not if the agent
/// aborted meanwhile (the file is then discarded).
pub fn may_commit(agent: Agent) -> bool {
    !agent.abort
}

/// The writes that end a cycle (the guest already resumed): `entering_fg` removed,
/// the outcome's keys, an honoured abort removed, `status` last.
pub fn finish(outcome: &Outcome) -> Vec<Op> {
    let mut ops = vec![Op::Rm("entering_fg")];
    let status = match outcome {
        Outcome::Committed { file } => {
            ops.push(Op::Write("file", file.clone()));
            ops.push(Op::Write("progress", "100".to_string()));
            Status::Success
        }
        Outcome::Cancelled { why } => {
            ops.push(Op::Write("error_info", why.clone()));
            ops.push(Op::Rm("abort"));
            Status::Cancelled
        }
        Outcome::TimedOut { limit } => {
            ops.push(Op::Write("error_info", format!("no suspend acknowledgement within {} s", limit.as_secs())));
            Status::Failure
        }
        Outcome::Failed { why } => {
            ops.push(Op::Write("error_info", why.clone()));
            Status::Failure
        }
    };
    ops.push(Op::Write("status", status.as_str().to_string()));
    ops
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A simulated agent: what it has written at each moment of the ack wait.
    type AgentAt = dyn Fn(Duration) -> Agent;

    /// Runs the ack wait against `agent`, polling every `step`, as the driver does.
    fn wait_for_ack(agent: &AgentAt, limit: Duration, step: Duration) -> (AckWait, Duration) {
        let mut waited = Duration::ZERO;
        loop {
            match ack_wait(agent(waited), waited, limit) {
                AckWait::Wait => waited += step,
                decision => return (decision, waited),
            }
        }
    }

    /// One whole cycle against a simulated agent: what the driver would write, and
    /// how it ended. `abort_in_precopy` aborts at that iteration; `abort_after_save`
    /// aborts once the save is done.
    fn cycle(agent: &AgentAt, at_start: Agent, abort_in_precopy: Option<u32>, abort_after_save: bool) -> Vec<Op> {
        let mut ops = match start(at_start, 7) {
            Ok(ops) => ops,
            Err(refused) => return refused,
        };
        for iteration in 0.. {
            let agent_now = Agent { abort: abort_in_precopy == Some(iteration), ..Agent::default() };
            match precopy(agent_now, iteration, 1000) {
                Precopy::Continue => ops.push(Op::Write("progress", (iteration * 10).to_string())),
                Precopy::StopAndCopy => break,
                Precopy::Abort => {
                    ops.extend(finish(&Outcome::Cancelled { why: "abort during the copy".into() }));
                    return ops;
                }
            }
        }
        ops.extend(request_suspend());
        let outcome = match wait_for_ack(agent, ACK_LIMIT, Duration::from_millis(100)) {
            (AckWait::Suspend, _) if may_commit(Agent { abort: abort_after_save, acked: true }) => {
                Outcome::Committed { file: "/ckpt/g.7".into() }
            }
            (AckWait::Suspend, _) => Outcome::Cancelled { why: "abort after the save".into() },
            (AckWait::Abort, _) => Outcome::Cancelled { why: "abort before the suspend".into() },
            (AckWait::TimedOut, _) => Outcome::TimedOut { limit: ACK_LIMIT },
            (AckWait::Wait, _) => unreachable!(),
        };
        ops.extend(finish(&outcome));
        ops
    }

    fn status_of(ops: &[Op]) -> &str {
        match ops.last() {
            Some(Op::Write("status", status)) => status,
            other => panic!("status is not last: {other:?}"),
        }
    }

    fn written<'a>(ops: &'a [Op], key: &str) -> Option<&'a str> {
        ops.iter().rev().find_map(|op| match op {
            Op::Write(k, v) if *k == key => Some(v.as_str()),
            _ => None,
        })
    }

    #[test]
    fn an_acknowledged_cycle_commits() {
        let agent = |t: Duration| Agent { acked: t >= Duration::from_secs(2), abort: false };
        assert_eq!(
            wait_for_ack(&agent, ACK_LIMIT, Duration::from_millis(100)),
            (AckWait::Suspend, Duration::from_secs(2))
        );
        let ops = cycle(&agent, Agent::default(), None, false);
        assert_eq!(ops.first(), Some(&Op::Write("seq", "7".into())));
        assert_eq!(status_of(&ops), "success");
        assert_eq!(written(&ops, "file"), Some("/ckpt/g.7"));
        assert!(ops.contains(&Op::Write("entering_fg", "1".into())) && ops.contains(&Op::Rm("entering_fg")));
        assert!(!ops.contains(&Op::Rm("abort")));
    }

    #[test]
    fn a_late_acknowledgement_is_a_timeout() {
        let late = |t: Duration| Agent { acked: t >= Duration::from_secs(70), abort: false };
        assert_eq!(wait_for_ack(&late, ACK_LIMIT, Duration::from_secs(1)), (AckWait::TimedOut, ACK_LIMIT));
        let ops = cycle(&late, Agent::default(), None, false);
        assert_eq!(status_of(&ops), "failure");
        assert_eq!(written(&ops, "error_info"), Some("no suspend acknowledgement within 60 s"));
        assert_eq!(written(&ops, "file"), None);
        let silent = |_: Duration| Agent::default();
        assert_eq!(status_of(&cycle(&silent, Agent::default(), None, false)), "failure");
    }

    #[test]
    fn an_abort_at_any_step_cancels() {
        let acks = |_: Duration| Agent { acked: true, abort: false };
        // Pending before the start: refused, nothing announced, the abort consumed.
        let refused = cycle(&acks, Agent { abort: true, acked: false }, None, false);
        assert_eq!(status_of(&refused), "cancelled");
        assert_eq!(written(&refused, "error_info"), Some("abort pending"));
        assert!(refused.contains(&Op::Rm("abort")) && written(&refused, "seq").is_none());
        // During the copy, at each iteration.
        for iteration in 0..PRECOPY_MAX_ITERATIONS {
            let ops = cycle(&acks, Agent::default(), Some(iteration), false);
            assert_eq!(status_of(&ops), "cancelled", "iteration {iteration}");
            assert!(!ops.contains(&Op::Write("entering_fg", "1".into())));
            assert!(ops.contains(&Op::Rm("abort")));
        }
        // During the acknowledgement wait; an abort with an ack at once is an abort.
        let aborts = |t: Duration| Agent { acked: t >= Duration::from_secs(1), abort: t >= Duration::from_secs(1) };
        assert_eq!(wait_for_ack(&aborts, ACK_LIMIT, Duration::from_millis(100)).0, AckWait::Abort);
        assert_eq!(status_of(&cycle(&aborts, Agent::default(), None, false)), "cancelled");
        // After the save: no file.
        let ops = cycle(&acks, Agent::default(), None, true);
        assert_eq!((status_of(&ops), written(&ops, "file")), ("cancelled", None));
    }

    #[test]
    fn precopy_follows_libxcs_rule_unless_aborted() {
        let quiet = Agent::default();
        assert_eq!(precopy(quiet, 0, -1), Precopy::Continue);
        assert_eq!(precopy(quiet, 1, 10_000), Precopy::Continue);
        assert_eq!(precopy(quiet, 1, 49), Precopy::StopAndCopy);
        assert_eq!(precopy(quiet, 5, 10_000), Precopy::StopAndCopy);
        assert_eq!(precopy(Agent { abort: true, acked: false }, 0, -1), Precopy::Abort);
        assert_eq!(Agent::from_values(Some("1"), Some("0")), Agent { acked: true, abort: false });
        assert_eq!(Agent::from_values(None, Some("1 ")), Agent::default());
        assert_eq!(base(3), "/local/domain/3/migration");
    }
}
