//! Lock and unlock actions (DESIGN section 3), a state machine with no I/O: a request becomes a
//! command to send, and the device's state reports (or their absence) complete it as
//! `succeeded`, `failed` or `timed_out`, each exactly once.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use serde::Serialize;

use super::drivers::{Command, LockState};
use crate::event::Millis;
pub use crate::wire::ActionError;

pub use crate::wire::{ActionSource as Source, ActionStatus as Status};

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Request {
    pub action_id: String,
    pub device: String,
    pub command: Command,
    pub source: Source,
    pub booking_id: Option<String>,
    pub grant_id: Option<String>,
    /// Unlocks: relock after this many seconds (Zigbee2MQTT and Home Assistant locks).
    pub duration_s: Option<u64>,
}

/// An accepted ZenCore unlock not yet completed, kept until the commit that stores its
/// `device.action_completed`, so that one pending at a crash is carried out (or expired)
/// after the restart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct PendingUnlock {
    pub action_id: String,
    pub device: String,
    pub booking_id: Option<String>,
    pub grant_id: Option<String>,
    pub duration_s: Option<u64>,
    pub not_after: Millis,
}

impl crate::record::Record for PendingUnlock {
    const FAMILY: &'static str = "unlock";
    const VERSION: u32 = 1;
}

impl PendingUnlock {
    pub fn request(&self) -> Request {
        Request {
            action_id: self.action_id.clone(),
            device: self.device.clone(),
            command: Command::Unlock,
            source: Source::Zencore,
            booking_id: self.booking_id.clone(),
            grant_id: self.grant_id.clone(),
            duration_s: self.duration_s,
        }
    }
}

/// A finished action: everything `device.action_completed` needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Completed {
    #[serde(flatten)]
    pub request: Request,
    pub status: Status,
    pub requested_at: Millis,
    pub completed_at: Millis,
    pub error: Option<ActionError>,
}

impl Request {
    /// A passage unlock: it lasts until a lock, the device times no pulse (DESIGN §3).
    pub fn holds(&self) -> bool {
        self.source == Source::Passage && self.command == Command::Unlock
    }
}

impl Completed {
    pub fn duration_ms(&self) -> u64 {
        self.completed_at
            .saturating_sub(self.requested_at)
            .as_millis() as u64
    }
}

#[derive(Debug, Clone)]
struct Pending {
    request: Request,
    requested_at: Millis,
    deadline: Millis,
    /// A device that can be asked for its state: at the first deadline it is asked once and
    /// given this long again before `timed_out` (a lock that does not echo its state).
    ask: Option<Duration>,
}

/// What to do after a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Start {
    /// Send the command; completion follows from state reports or the timeout.
    Send,
    /// Finished at once (device known offline, or no way to command it).
    Done(Completed),
}

#[derive(Debug, Default)]
pub struct Tracker {
    pending: HashMap<String, VecDeque<Pending>>,
    /// Devices that answer a state query (Zigbee2MQTT's `/get`).
    askable: std::collections::HashSet<String>,
    /// Devices to ask for their state now (taken by the hub).
    asks: Vec<String>,
}

impl Tracker {
    /// The devices that can be asked for their state before an action times out.
    pub fn askable(devices: impl IntoIterator<Item = String>) -> Tracker {
        Tracker {
            askable: devices.into_iter().collect(),
            ..Tracker::default()
        }
    }

    /// The devices to ask for their state now, once each.
    pub fn take_asks(&mut self) -> Vec<String> {
        let mut asks = std::mem::take(&mut self.asks);
        asks.dedup();
        asks
    }

    /// Starts an action. `online`: the device's believed presence (`Some(false)` fails at
    /// once; a device not heard from since start is tried). `can_send`: whether the driver has
    /// a command for it.
    pub fn request(
        &mut self,
        request: Request,
        online: Option<bool>,
        can_send: bool,
        timeout: Duration,
        now: Millis,
    ) -> Start {
        let fail = |request, error| {
            Start::Done(Completed {
                request,
                status: Status::Failed,
                requested_at: now,
                completed_at: now,
                error: Some(error),
            })
        };
        if !can_send {
            return fail(request, ActionError::Unsupported);
        }
        if online == Some(false) {
            return fail(request, ActionError::DeviceOffline);
        }
        self.pending
            .entry(request.device.clone())
            .or_default()
            .push_back(Pending {
                ask: self.askable.contains(&request.device).then_some(timeout),
                request,
                requested_at: now,
                deadline: now.saturating_add(timeout),
            });
        Start::Send
    }

    /// A state report from `device`: completes the actions it answers.
    pub fn observe(&mut self, device: &str, state: LockState, now: Millis) -> Vec<Completed> {
        let Some(queue) = self.pending.get_mut(device) else {
            return Vec::new();
        };
        let mut done = Vec::new();
        queue.retain(|p| {
            let outcome = match (p.request.command, state) {
                (_, LockState::Jammed) => Some((Status::Failed, Some(ActionError::Jammed))),
                (Command::Unlock, LockState::Unlocked) | (Command::Lock, LockState::Locked) => {
                    Some((Status::Succeeded, None))
                }
                _ => None,
            };
            match outcome {
                Some((status, error)) => {
                    done.push(Completed {
                        request: p.request.clone(),
                        status,
                        requested_at: p.requested_at,
                        completed_at: now,
                        error,
                    });
                    false
                }
                None => true,
            }
        });
        if queue.is_empty() {
            self.pending.remove(device);
        }
        done
    }

    /// A device that confirms commands itself (serial) refused or never answered one: the
    /// oldest pending action with that command fails.
    pub fn failed(
        &mut self,
        device: &str,
        command: Command,
        error: ActionError,
        now: Millis,
    ) -> Vec<Completed> {
        let Some(queue) = self.pending.get_mut(device) else {
            return Vec::new();
        };
        let Some(i) = queue.iter().position(|p| p.request.command == command) else {
            return Vec::new();
        };
        let mut done = Vec::new();
        if let Some(p) = queue.remove(i) {
            done.push(Completed {
                request: p.request,
                status: Status::Failed,
                requested_at: p.requested_at,
                completed_at: now,
                error: Some(error),
            });
        }
        if queue.is_empty() {
            self.pending.remove(device);
        }
        done
    }

    /// The device went offline: its pending actions fail now rather than at their timeout.
    pub fn offline(&mut self, device: &str, now: Millis) -> Vec<Completed> {
        self.pending
            .remove(device)
            .unwrap_or_default()
            .into_iter()
            .map(|p| Completed {
                request: p.request,
                status: Status::Failed,
                requested_at: p.requested_at,
                completed_at: now,
                error: Some(ActionError::DeviceOffline),
            })
            .collect()
    }

    /// Times out actions past their deadline (a device that can be asked is asked once first).
    pub fn tick(&mut self, now: Millis) -> Vec<Completed> {
        let mut done = Vec::new();
        let asks = &mut self.asks;
        for (device, queue) in self.pending.iter_mut() {
            queue.retain_mut(|p| {
                if now < p.deadline {
                    return true;
                }
                if let Some(again) = p.ask.take() {
                    asks.push(device.clone());
                    p.deadline = now.saturating_add(again);
                    return true;
                }
                done.push(Completed {
                    request: p.request.clone(),
                    status: Status::TimedOut,
                    requested_at: p.requested_at,
                    completed_at: now,
                    error: Some(ActionError::Timeout),
                });
                false
            });
        }
        self.pending.retain(|_, q| !q.is_empty());
        done
    }

    pub fn next_deadline(&self) -> Option<Millis> {
        self.pending
            .values()
            .flat_map(|q| q.iter().map(|p| p.deadline))
            .min()
    }

    /// Pending actions of a device, for `zenedge devices`.
    pub fn pending_for(&self, device: &str) -> Vec<&Request> {
        self.pending
            .get(device)
            .map(|q| q.iter().map(|p| &p.request).collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(id: &str, command: Command) -> Request {
        Request {
            action_id: id.into(),
            device: "door".into(),
            command,
            source: Source::Operator,
            booking_id: None,
            grant_id: None,
            duration_s: None,
        }
    }

    const T: Duration = Duration::from_secs(10);

    #[test]
    fn unlock_succeeds_on_the_confirming_report() {
        let mut t = Tracker::default();
        assert_eq!(
            t.request(req("a1", Command::Unlock), None, true, T, Millis(1000)),
            Start::Send
        );
        assert!(
            t.observe("door", LockState::Locked, Millis(1100))
                .is_empty(),
            "not the answer"
        );
        let done = t.observe("door", LockState::Unlocked, Millis(1250));
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].status, Status::Succeeded);
        assert_eq!(done[0].duration_ms(), 250);
        assert!(t.tick(Millis(99_999)).is_empty(), "completed exactly once");
    }

    #[test]
    fn a_lock_that_can_be_asked_is_asked_once_before_it_times_out() {
        let mut t = Tracker::askable(["door".to_owned()]);
        t.request(req("a", Command::Unlock), Some(true), true, T, Millis(0));
        // The first deadline: asked, not timed out.
        assert!(t.tick(Millis(10_000)).is_empty());
        assert_eq!(t.take_asks(), vec!["door".to_owned()]);
        assert!(t.take_asks().is_empty(), "asked once");
        // Its answer to the question completes the action.
        let done = t.observe("door", LockState::Unlocked, Millis(12_000));
        assert_eq!(done[0].status, Status::Succeeded);
        // A second action whose lock stays silent times out after the second wait.
        t.request(req("b", Command::Lock), Some(true), true, T, Millis(20_000));
        assert!(t.tick(Millis(30_000)).is_empty());
        assert_eq!(t.take_asks().len(), 1);
        assert!(t.tick(Millis(39_999)).is_empty());
        let done = t.tick(Millis(40_000));
        assert_eq!(done[0].status, Status::TimedOut);
        assert!(t.take_asks().is_empty());
    }

    #[test]
    fn jam_fails_timeout_times_out_offline_fails_at_once() {
        let mut t = Tracker::default();
        t.request(req("a", Command::Lock), Some(true), true, T, Millis(0));
        let done = t.observe("door", LockState::Jammed, Millis(5));
        assert_eq!(
            (done[0].status, done[0].error),
            (Status::Failed, Some(ActionError::Jammed))
        );

        t.request(req("b", Command::Unlock), Some(true), true, T, Millis(0));
        assert_eq!(t.next_deadline(), Some(Millis(10_000)));
        assert!(t.tick(Millis(9_999)).is_empty());
        let done = t.tick(Millis(10_000));
        assert_eq!(done[0].status, Status::TimedOut);

        match t.request(req("c", Command::Unlock), Some(false), true, T, Millis(0)) {
            Start::Done(c) => assert_eq!(
                (c.status, c.error),
                (Status::Failed, Some(ActionError::DeviceOffline))
            ),
            other => panic!("{other:?}"),
        }
        t.request(req("d", Command::Unlock), Some(true), true, T, Millis(0));
        let done = t.offline("door", Millis(3));
        assert_eq!(done[0].error, Some(ActionError::DeviceOffline));
        assert!(t.next_deadline().is_none());
    }
}
