//! Presence tracking (DESIGN section 3), a state machine with no I/O: observations and time go
//! in, `device.online` / `device.offline` transitions come out.
//!
//! - Online once availability says so or the device reports live (non-retained) state.
//! - Offline on availability/LWT offline, bridge offline, or silence longer than the device's
//!   `offline_after`.
//! - Debounced: an observed state must hold for `debounce` before it is reported, so a flap
//!   shorter than that produces nothing.
//! - The last state reported to ZenCore is what the caller persists ([`Reported`]); loaded
//!   after a restart, it keeps ZenEdge from re-sending a transition ZenCore already has.

use std::collections::HashMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::event::Millis;

/// Why a device is believed online or offline; the event's `reason`.
pub use crate::wire::PresenceReason as Reason;

/// The state last reported to ZenCore, persisted by the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reported {
    pub online: bool,
    /// When that state began (the event's timestamp).
    pub since: Millis,
    pub last_seen: Option<Millis>,
}

impl crate::record::Record for Reported {
    const FAMILY: &'static str = "presence";
    const VERSION: u32 = 1;
}

/// A transition to report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transition {
    Online {
        device: String,
        reason: Reason,
        at: Millis,
        /// When the offline period began, if one is known.
        offline_since: Option<Millis>,
    },
    Offline {
        device: String,
        reason: Reason,
        /// The last message that showed it alive.
        last_seen: Option<Millis>,
        detected_at: Millis,
    },
}

impl Transition {
    pub fn device(&self) -> &str {
        match self {
            Transition::Online { device, .. } | Transition::Offline { device, .. } => device,
        }
    }

    /// The record to persist once this transition's event is stored.
    pub fn reported(&self, last_seen: Option<Millis>) -> Reported {
        match self {
            Transition::Online { at, .. } => Reported {
                online: true,
                since: *at,
                last_seen,
            },
            Transition::Offline { detected_at, .. } => Reported {
                online: false,
                since: *detected_at,
                last_seen,
            },
        }
    }
}

#[derive(Debug, Clone)]
struct Device {
    offline_after: Option<Duration>,
    reported: Option<Reported>,
    /// The believed state, its reason and since when.
    observed: Option<(bool, Reason, Millis)>,
    last_seen: Option<Millis>,
}

/// What `zenedge devices` shows of a device's presence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PresenceView {
    pub online: Option<bool>,
    pub reason: Option<&'static str>,
    pub since: Option<String>,
    pub last_seen: Option<String>,
    pub reported_online: Option<bool>,
}

#[derive(Debug)]
pub struct Tracker {
    debounce: Duration,
    /// Silence is measured from here for devices not heard since start.
    started: Millis,
    devices: HashMap<String, Device>,
}

impl Tracker {
    /// `devices`: each device id with its `offline_after` and its persisted reported state.
    pub fn new(
        debounce: Duration,
        started: Millis,
        devices: impl IntoIterator<Item = (String, Option<Duration>, Option<Reported>)>,
    ) -> Tracker {
        let devices = devices
            .into_iter()
            .map(|(id, offline_after, reported)| {
                (
                    id,
                    Device {
                        offline_after,
                        last_seen: reported.and_then(|r| r.last_seen),
                        reported,
                        observed: None,
                    },
                )
            })
            .collect();
        Tracker {
            debounce,
            started,
            devices,
        }
    }

    pub fn set_debounce(&mut self, debounce: Duration) {
        self.debounce = debounce;
    }

    pub fn last_seen(&self, device: &str) -> Option<Millis> {
        self.devices.get(device).and_then(|d| d.last_seen)
    }

    /// The believed state: `Some(false)` only when the device is known to be offline.
    pub fn is_online(&self, device: &str) -> Option<bool> {
        self.devices
            .get(device)
            .and_then(|d| d.observed.map(|(o, _, _)| o))
    }

    pub fn view(&self, device: &str) -> Option<PresenceView> {
        let d = self.devices.get(device)?;
        Some(PresenceView {
            online: d.observed.map(|(o, _, _)| o),
            reason: d.observed.map(|(_, r, _)| r.as_str()),
            since: d.observed.map(|(_, _, t)| t.rfc3339()),
            last_seen: d.last_seen.map(|t| t.rfc3339()),
            reported_online: d.reported.map(|r| r.online),
        })
    }

    /// An availability-like observation: `online` with its reason.
    pub fn observe(
        &mut self,
        device: &str,
        online: bool,
        reason: Reason,
        now: Millis,
    ) -> Vec<Transition> {
        let Some(d) = self.devices.get_mut(device) else {
            return Vec::new();
        };
        if online {
            d.last_seen = Some(now);
        }
        if d.observed.map(|(o, _, _)| o) != Some(online) {
            d.observed = Some((online, reason, now));
        }
        self.settle(device, now)
    }

    /// A live message from the device (any non-retained message): it is alive.
    pub fn heard(&mut self, device: &str, now: Millis) -> Vec<Transition> {
        let Some(d) = self.devices.get_mut(device) else {
            return Vec::new();
        };
        d.last_seen = Some(now);
        if d.observed.map(|(o, _, _)| o) != Some(true) {
            d.observed = Some((true, Reason::StateReport, now));
        }
        self.settle(device, now)
    }

    /// Advances time: silence timeouts and debounce expiries.
    pub fn tick(&mut self, now: Millis) -> Vec<Transition> {
        let ids: Vec<String> = self.devices.keys().cloned().collect();
        let mut out = Vec::new();
        for id in ids {
            if let Some(d) = self.devices.get_mut(&id) {
                if let Some(limit) = d.offline_after {
                    let reference = d.last_seen.unwrap_or(self.started).max(self.started);
                    let believed_online = match d.observed {
                        Some((o, _, _)) => o,
                        // Not heard since start: silence counts if ZenCore believes it online.
                        None => d.reported.is_some_and(|r| r.online),
                    };
                    let silent_since = reference.saturating_add(limit);
                    if believed_online && now >= silent_since {
                        d.observed = Some((false, Reason::HeartbeatTimeout, silent_since));
                    }
                }
            }
            out.extend(self.settle(&id, now));
        }
        out
    }

    /// When [`Tracker::tick`] may next have something to do.
    pub fn next_deadline(&self) -> Option<Millis> {
        self.devices
            .values()
            .filter_map(|d| {
                let debounce_end = match (d.observed, d.reported) {
                    (Some((o, _, since)), r) if r.map(|r| r.online) != Some(o) => {
                        Some(since.saturating_add(self.debounce))
                    }
                    _ => None,
                };
                let silence = d.offline_after.and_then(|limit| {
                    let online = match d.observed {
                        Some((o, _, _)) => o,
                        None => d.reported.is_some_and(|r| r.online),
                    };
                    online.then(|| {
                        d.last_seen
                            .unwrap_or(self.started)
                            .max(self.started)
                            .saturating_add(limit)
                    })
                });
                match (debounce_end, silence) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                }
            })
            .min()
    }

    /// Reports the observed state once it has held for the debounce and differs from what
    /// ZenCore has.
    fn settle(&mut self, device: &str, now: Millis) -> Vec<Transition> {
        let debounce = self.debounce;
        let Some(d) = self.devices.get_mut(device) else {
            return Vec::new();
        };
        let Some((online, reason, since)) = d.observed else {
            return Vec::new();
        };
        if d.reported.map(|r| r.online) == Some(online) {
            return Vec::new();
        }
        if now.saturating_sub(since) < debounce {
            return Vec::new();
        }
        let t = if online {
            Transition::Online {
                device: device.to_owned(),
                reason,
                at: since,
                offline_since: d.reported.filter(|r| !r.online).map(|r| r.since),
            }
        } else {
            Transition::Offline {
                device: device.to_owned(),
                reason,
                last_seen: d.last_seen,
                detected_at: since,
            }
        };
        d.reported = Some(t.reported(d.last_seen));
        vec![t]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(s: u64) -> Millis {
        Millis(1_000_000 + s * 1000)
    }

    fn tracker(debounce_s: u64, offline_after: Option<u64>) -> Tracker {
        Tracker::new(
            Duration::from_secs(debounce_s),
            ms(0),
            [(
                "lock".to_string(),
                offline_after.map(Duration::from_secs),
                None,
            )],
        )
    }

    fn kinds(ts: &[Transition]) -> Vec<(&'static str, Reason)> {
        ts.iter()
            .map(|t| match t {
                Transition::Online { reason, .. } => ("online", *reason),
                Transition::Offline { reason, .. } => ("offline", *reason),
            })
            .collect()
    }

    #[test]
    fn without_debounce_transitions_are_immediate() {
        let mut t = tracker(0, None);
        let on = t.observe("lock", true, Reason::Availability, ms(1));
        assert_eq!(
            on,
            vec![Transition::Online {
                device: "lock".into(),
                reason: Reason::Availability,
                at: ms(1),
                offline_since: None
            }]
        );
        assert!(t.heard("lock", ms(2)).is_empty(), "already online");
        let off = t.observe("lock", false, Reason::Lwt, ms(3));
        assert_eq!(
            off,
            vec![Transition::Offline {
                device: "lock".into(),
                reason: Reason::Lwt,
                last_seen: Some(ms(2)),
                detected_at: ms(3)
            }]
        );
        let back = t.heard("lock", ms(9));
        assert!(matches!(
            back[0],
            Transition::Online { reason: Reason::StateReport, offline_since: Some(s), .. } if s == ms(3)
        ));
    }

    #[test]
    fn a_flap_shorter_than_the_debounce_produces_nothing() {
        let mut t = tracker(5, None);
        t.observe("lock", true, Reason::Availability, ms(0));
        assert_eq!(
            kinds(&t.tick(ms(5))),
            vec![("online", Reason::Availability)]
        );
        for i in 0..10 {
            assert!(t
                .observe("lock", false, Reason::Availability, ms(10 + i * 2))
                .is_empty());
            assert!(t.tick(ms(11 + i * 2)).is_empty());
            assert!(t
                .observe("lock", true, Reason::Availability, ms(11 + i * 2))
                .is_empty());
        }
        assert!(t.tick(ms(60)).is_empty());
        // A real outage: one offline, dated when it began.
        t.observe("lock", false, Reason::Availability, ms(100));
        assert!(t.tick(ms(104)).is_empty());
        assert_eq!(t.next_deadline(), Some(ms(105)));
        let off = t.tick(ms(105));
        assert!(
            matches!(off[..], [Transition::Offline { detected_at, .. }] if detected_at == ms(100))
        );
        assert!(t.tick(ms(200)).is_empty(), "exactly one");
    }

    #[test]
    fn silence_longer_than_offline_after_is_offline() {
        let mut t = tracker(0, Some(60));
        t.heard("lock", ms(10));
        assert_eq!(t.next_deadline(), Some(ms(70)));
        assert!(t.tick(ms(69)).is_empty());
        let off = t.tick(ms(70));
        assert!(matches!(
            off[..],
            [Transition::Offline { reason: Reason::HeartbeatTimeout, last_seen: Some(l), detected_at, .. }]
                if l == ms(10) && detected_at == ms(70)
        ));
        assert_eq!(
            kinds(&t.heard("lock", ms(80))),
            vec![("online", Reason::StateReport)]
        );
    }

    #[test]
    fn a_restart_does_not_resend_what_zencore_has_and_sends_what_changed() {
        let reported = Reported {
            online: true,
            since: ms(0),
            last_seen: Some(ms(0)),
        };
        let mut t = Tracker::new(
            Duration::ZERO,
            ms(100),
            [("lock".to_string(), None, Some(reported))],
        );
        assert!(t
            .observe("lock", true, Reason::Availability, ms(101))
            .is_empty());
        let mut t = Tracker::new(
            Duration::ZERO,
            ms(100),
            [("lock".to_string(), None, Some(reported))],
        );
        assert_eq!(
            kinds(&t.observe("lock", false, Reason::Availability, ms(101))),
            vec![("offline", Reason::Availability)]
        );
    }

    #[test]
    fn a_device_believed_online_but_silent_since_restart_goes_offline() {
        let reported = Reported {
            online: true,
            since: ms(0),
            last_seen: Some(ms(0)),
        };
        let mut t = Tracker::new(
            Duration::ZERO,
            ms(100),
            [(
                "lock".to_string(),
                Some(Duration::from_secs(30)),
                Some(reported),
            )],
        );
        assert!(t.tick(ms(129)).is_empty(), "silence counts from start");
        assert_eq!(
            kinds(&t.tick(ms(130))),
            vec![("offline", Reason::HeartbeatTimeout)]
        );
    }

    #[test]
    fn unknown_devices_are_ignored() {
        let mut t = tracker(0, None);
        assert!(t
            .observe("nope", true, Reason::Availability, ms(1))
            .is_empty());
        assert!(t.heard("nope", ms(1)).is_empty());
    }
}
