//! Doors that know whether they are shut (DESIGN §3): a lock or strike with a `contact`.
//!
//! Pure: a contact's report, an unlock sent, a lock's own state report, a relock to send or the
//! passing of time goes in; the door events (`door.opened`, `door.closed`, `door.forced_open`,
//! `door.held_open`), the door records to store and the relocks that may now go out come out.
//!
//! An opening is excused (not forced) while an unlock of that door is active: from the moment
//! it was sent until its pulse (or `duration_s`) ends plus `access.entry_grace`, and for as long
//! as the door's own lock or relay reports itself unlocked (a thumbturn turned from inside, a
//! relay held on), plus the grace after it reports locked again.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::actions::Request;
use crate::event::Millis;
use crate::wire::{Data, DoorEvent};

/// A door's state as last reported to ZenCore, kept across restarts so that a restart neither
/// reports an opening again nor misses one that happened while ZenEdge was down.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DoorRecord {
    /// `None` until the contact has said anything.
    pub closed: Option<bool>,
    /// When the current opening began.
    pub opened_at: Option<Millis>,
    /// This opening's `door.held_open` was sent.
    pub held_reported: bool,
}

impl crate::record::Record for DoorRecord {
    const FAMILY: &'static str = "door";
    const VERSION: u32 = 1;
}

/// A door held unlocked by passage mode, kept across restarts: a restart sends its hold again
/// (a relay board is switched off when its port opens) without reporting a new change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PassageHold {
    pub booking_id: String,
}

impl crate::record::Record for PassageHold {
    const FAMILY: &'static str = "passage";
    const VERSION: u32 = 1;
}

/// One door as configured.
#[derive(Debug, Clone)]
pub struct DoorSpec {
    pub door: String,
    pub contact: String,
    pub held_open_after: Duration,
    /// How long an unlock without `duration_s` keeps the door unlocked (the strike's pulse; a
    /// motor lock's action timeout, until it reports itself unlocked).
    pub pulse: Duration,
    /// The device times its own pulse and ignores `duration_s` (a Tasmota relay's PulseTime).
    pub fixed_pulse: bool,
}

/// What the doors ask of the hub.
#[derive(Debug, Clone, PartialEq)]
pub enum Out {
    /// A door event: about `door` (its device fields), at `at`.
    Event {
        door: String,
        data: Data,
        at: Millis,
    },
    /// The door's record to store with its events.
    Record(String, DoorRecord),
    /// A relock that waited for the door to close, to send now.
    Send(Request),
    /// A relock sent although the door's contact is offline (it counts as closed): reported.
    RelockBlind { door: String, contact: String },
}

#[derive(Debug)]
struct Door {
    spec: DoorSpec,
    record: DoorRecord,
    /// Openings are excused up to this moment (the unlock's pulse plus the grace).
    excused_until: Option<Millis>,
    /// The door's lock or relay says it is unlocked.
    reported_unlocked: bool,
    /// Held unlocked by passage mode: an opening is not forced, nor held open.
    held: bool,
    /// Relocks waiting for the contact to say closed.
    waiting: Vec<Request>,
}

#[derive(Debug, Default)]
pub struct Doors {
    grace: Duration,
    doors: BTreeMap<String, Door>,
    /// Contacts that are offline (their doors relock blind and report no held-open).
    offline: std::collections::HashSet<String>,
}

impl Doors {
    pub fn new(
        specs: impl IntoIterator<Item = DoorSpec>,
        grace: Duration,
        records: impl IntoIterator<Item = (String, DoorRecord)>,
    ) -> Doors {
        let mut records: BTreeMap<String, DoorRecord> = records.into_iter().collect();
        let doors = specs
            .into_iter()
            .map(|spec| {
                let record = records.remove(&spec.door).unwrap_or_default();
                let door = Door {
                    spec,
                    record,
                    excused_until: None,
                    reported_unlocked: false,
                    held: false,
                    waiting: Vec::new(),
                };
                (door.spec.door.clone(), door)
            })
            .collect();
        Doors {
            grace,
            doors,
            offline: Default::default(),
        }
    }

    /// A contact's report: opened, closed, or the same as before.
    pub fn contact(&mut self, contact: &str, closed: bool, now: Millis) -> Vec<Out> {
        self.offline.remove(contact);
        let mut out = Vec::new();
        for door in self.doors.values_mut() {
            if door.spec.contact != contact {
                continue;
            }
            let was = door.record.closed;
            let event = |data: fn(DoorEvent) -> Data, opened_at: Millis, at: Millis| Out::Event {
                door: door.spec.door.clone(),
                data: data(DoorEvent {
                    contact_id: contact.to_owned(),
                    opened_at,
                }),
                at,
            };
            match (was, closed) {
                // The first word of a contact never heard before: what the door is, not news.
                (None, _) => {
                    door.record = DoorRecord {
                        closed: Some(closed),
                        opened_at: (!closed).then_some(now),
                        held_reported: false,
                    };
                    out.push(Out::Record(door.spec.door.clone(), door.record));
                }
                (Some(true), false) => {
                    let excused = door.held
                        || door.reported_unlocked
                        || door.excused_until.is_some_and(|t| now <= t);
                    out.push(event(Data::DoorOpened, now, now));
                    if !excused {
                        out.push(event(Data::DoorForcedOpen, now, now));
                    }
                    door.record = DoorRecord {
                        closed: Some(false),
                        opened_at: Some(now),
                        held_reported: false,
                    };
                    out.push(Out::Record(door.spec.door.clone(), door.record));
                }
                (Some(false), true) => {
                    let opened_at = door.record.opened_at.unwrap_or(now);
                    out.push(event(Data::DoorClosed, opened_at, now));
                    door.record = DoorRecord {
                        closed: Some(true),
                        opened_at: None,
                        held_reported: false,
                    };
                    out.push(Out::Record(door.spec.door.clone(), door.record));
                }
                (Some(_), _) => {}
            }
            if closed {
                out.extend(door.waiting.drain(..).map(Out::Send));
            }
        }
        out
    }

    /// A contact went offline: it counts as closed for relocks (each one reported), and says
    /// nothing about openings until it is back.
    pub fn contact_offline(&mut self, contact: &str) -> Vec<Out> {
        self.offline.insert(contact.to_owned());
        let mut out = Vec::new();
        for door in self.doors.values_mut() {
            if door.spec.contact != contact {
                continue;
            }
            for r in door.waiting.drain(..) {
                out.push(Out::RelockBlind {
                    door: door.spec.door.clone(),
                    contact: contact.to_owned(),
                });
                out.push(Out::Send(r));
            }
        }
        out
    }

    /// An unlock was sent to `door`: openings are excused for its pulse plus the grace.
    pub fn unlock_sent(&mut self, door: &str, duration_s: Option<u64>, now: Millis) {
        let grace = self.grace;
        let Some(d) = self.doors.get_mut(door) else {
            return;
        };
        let pulse = match duration_s {
            Some(s) if !d.spec.fixed_pulse => Duration::from_secs(s),
            _ => d.spec.pulse,
        };
        let until = now.saturating_add(pulse).saturating_add(grace);
        d.excused_until = Some(d.excused_until.map_or(until, |t| t.max(until)));
    }

    /// The door's lock or relay reported its state.
    pub fn lock_state(&mut self, door: &str, unlocked: bool, now: Millis) {
        let grace = self.grace;
        let Some(d) = self.doors.get_mut(door) else {
            return;
        };
        if d.reported_unlocked && !unlocked {
            // The unlock is over (the lock or relay says so): only the grace runs on, whatever
            // the pulse it was sent with would have allowed.
            d.excused_until = Some(now.saturating_add(grace));
        }
        d.reported_unlocked = unlocked;
    }

    /// Passage mode holds the door unlocked (or lets go of it: the grace runs from then).
    pub fn set_held(&mut self, door: &str, held: bool, now: Millis) {
        let grace = self.grace;
        if let Some(d) = self.doors.get_mut(door) {
            if d.held && !held {
                let until = now.saturating_add(grace);
                d.excused_until = Some(d.excused_until.map_or(until, |t| t.max(until)));
            }
            d.held = held;
        }
    }

    /// A relock (after `duration_s`, at passage's end): back to be sent now, or kept until the
    /// contact says closed. A door without a contact, or whose contact is offline or has never
    /// spoken, is relocked at once (the latter two reported).
    pub fn relock(&mut self, request: Request) -> Vec<Out> {
        let Some(d) = self.doors.get_mut(&request.device) else {
            return vec![Out::Send(request)];
        };
        let contact = d.spec.contact.clone();
        if self.offline.contains(&contact) || d.record.closed.is_none() {
            return vec![
                Out::RelockBlind {
                    door: request.device.clone(),
                    contact,
                },
                Out::Send(request),
            ];
        }
        if d.record.closed == Some(false) {
            // A later relock of the same door replaces an earlier one: one LOCK when it shuts.
            d.waiting.retain(|r| r.action_id != request.action_id);
            d.waiting.push(request);
            return Vec::new();
        }
        vec![Out::Send(request)]
    }

    /// Relocks waiting on `door` (a lockdown locks at once and makes them moot).
    pub fn drop_waiting(&mut self, door: &str) -> Vec<Request> {
        self.doors
            .get_mut(door)
            .map(|d| std::mem::take(&mut d.waiting))
            .unwrap_or_default()
    }

    /// Doors open past their `held_open_after`: one `door.held_open` per opening.
    pub fn tick(&mut self, now: Millis) -> Vec<Out> {
        let mut out = Vec::new();
        for d in self.doors.values_mut() {
            let Some(due) = held_due(d, &self.offline) else {
                continue;
            };
            if now < due {
                continue;
            }
            d.record.held_reported = true;
            out.push(Out::Event {
                door: d.spec.door.clone(),
                data: Data::DoorHeldOpen(DoorEvent {
                    contact_id: d.spec.contact.clone(),
                    opened_at: d.record.opened_at.unwrap_or(now),
                }),
                at: due,
            });
            out.push(Out::Record(d.spec.door.clone(), d.record));
        }
        out
    }

    pub fn next_deadline(&self) -> Option<Millis> {
        self.doors
            .values()
            .filter_map(|d| held_due(d, &self.offline))
            .min()
    }

    /// `open`, `closed` or `unknown`, for `zenedge devices`: of a door, or of a contact (what
    /// its first door shows).
    pub fn view(&self, device: &str) -> Option<&'static str> {
        let d = self
            .doors
            .get(device)
            .or_else(|| self.doors.values().find(|d| d.spec.contact == device))?;
        Some(match d.record.closed {
            _ if self.offline.contains(&d.spec.contact) => "unknown",
            Some(true) => "closed",
            Some(false) => "open",
            None => "unknown",
        })
    }

    /// Whether a relock of `door` is waiting for it to close.
    pub fn waiting(&self, door: &str) -> usize {
        self.doors.get(door).map_or(0, |d| d.waiting.len())
    }
}

/// When `d`'s `door.held_open` is due, if it is still to be sent.
fn held_due(d: &Door, offline: &std::collections::HashSet<String>) -> Option<Millis> {
    if d.record.closed != Some(false)
        || d.record.held_reported
        || d.held
        || offline.contains(&d.spec.contact)
    {
        return None;
    }
    Some(d.record.opened_at?.saturating_add(d.spec.held_open_after))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::actions::Source;
    use crate::wire::DoorAction;

    const T: u64 = 1_800_000_000_000;

    fn at(ms: u64) -> Millis {
        Millis(T + ms)
    }

    fn doors() -> Doors {
        Doors::new(
            [DoorSpec {
                door: "front".into(),
                contact: "front-contact".into(),
                held_open_after: Duration::from_secs(60),
                pulse: Duration::from_secs(5),
                fixed_pulse: false,
            }],
            Duration::from_secs(10),
            [],
        )
    }

    fn kinds(out: &[Out]) -> Vec<&'static str> {
        out.iter()
            .filter_map(|o| match o {
                Out::Event { data, .. } => Some(data.kind().as_str()),
                Out::Send(_) => Some("send"),
                Out::RelockBlind { .. } => Some("blind"),
                Out::Record(..) => None,
            })
            .collect()
    }

    fn relock(id: &str) -> Request {
        Request {
            action_id: id.into(),
            device: "front".into(),
            command: DoorAction::Lock,
            source: Source::Zencore,
            booking_id: None,
            grant_id: None,
            duration_s: None,
        }
    }

    #[test]
    fn an_opening_without_an_unlock_is_forced_and_within_the_pulse_and_grace_it_is_not() {
        let mut d = doors();
        // The first report says what the door is: no news.
        assert!(kinds(&d.contact("front-contact", true, at(0))).is_empty());
        assert_eq!(
            kinds(&d.contact("front-contact", false, at(1_000))),
            ["door.opened", "door.forced_open"]
        );
        assert_eq!(
            kinds(&d.contact("front-contact", true, at(2_000))),
            ["door.closed"]
        );
        // Unlocked at 10 s with a 5 s pulse: excused until 25 s, forced after.
        d.unlock_sent("front", None, at(10_000));
        assert_eq!(
            kinds(&d.contact("front-contact", false, at(25_000))),
            ["door.opened"]
        );
        d.contact("front-contact", true, at(25_500));
        assert_eq!(
            kinds(&d.contact("front-contact", false, at(25_001 + 1_000))),
            ["door.opened", "door.forced_open"]
        );
        // `duration_s` is the pulse where the device takes it.
        d.contact("front-contact", true, at(30_000));
        d.unlock_sent("front", Some(100), at(30_000));
        assert_eq!(
            kinds(&d.contact("front-contact", false, at(135_000))),
            ["door.opened"]
        );
    }

    #[test]
    fn a_lock_that_says_it_is_unlocked_excuses_openings_until_the_grace_after_it_locks() {
        let mut d = doors();
        d.contact("front-contact", true, at(0));
        d.lock_state("front", true, at(0));
        assert_eq!(
            kinds(&d.contact("front-contact", false, at(500_000))),
            ["door.opened"]
        );
        d.contact("front-contact", true, at(501_000));
        d.lock_state("front", false, at(502_000));
        assert_eq!(
            kinds(&d.contact("front-contact", false, at(512_000))),
            ["door.opened"]
        );
        d.contact("front-contact", true, at(513_000));
        assert_eq!(
            kinds(&d.contact("front-contact", false, at(512_001 + 10_000))),
            ["door.opened", "door.forced_open"]
        );
    }

    #[test]
    fn a_door_open_past_its_threshold_is_held_open_once_per_opening() {
        let mut d = doors();
        d.contact("front-contact", true, at(0));
        d.unlock_sent("front", None, at(0));
        d.contact("front-contact", false, at(1_000));
        assert_eq!(d.next_deadline(), Some(at(61_000)));
        assert!(kinds(&d.tick(at(60_999))).is_empty());
        let out = d.tick(at(61_000));
        assert_eq!(kinds(&out), ["door.held_open"]);
        assert!(
            matches!(&out[0], Out::Event { at: t, data: Data::DoorHeldOpen(e), .. }
            if *t == at(61_000) && e.opened_at == at(1_000) && e.contact_id == "front-contact")
        );
        assert!(kinds(&d.tick(at(200_000))).is_empty());
        assert_eq!(d.next_deadline(), None);
        let closed = d.contact("front-contact", true, at(300_000));
        assert!(
            matches!(&closed[0], Out::Event { data: Data::DoorClosed(e), .. }
            if e.opened_at == at(1_000))
        );
        // A new opening, a new threshold.
        d.contact("front-contact", false, at(400_000));
        assert_eq!(kinds(&d.tick(at(460_000))), ["door.held_open"]);
    }

    #[test]
    fn a_relock_waits_for_the_door_to_close_unless_its_contact_is_offline() {
        let mut d = doors();
        // A contact that never spoke: relocked at once, and said so.
        assert_eq!(kinds(&d.relock(relock("a:relock"))), ["blind", "send"]);
        d.contact("front-contact", true, at(0));
        assert_eq!(kinds(&d.relock(relock("b:relock"))), ["send"]);
        d.unlock_sent("front", None, at(1_000));
        d.contact("front-contact", false, at(2_000));
        assert!(d.relock(relock("c:relock")).is_empty());
        assert_eq!(d.waiting("front"), 1);
        // Still open: nothing; closed: the relock goes.
        assert!(kinds(&d.contact("front-contact", false, at(3_000))).is_empty());
        let out = d.contact("front-contact", true, at(9_000));
        assert_eq!(kinds(&out), ["door.closed", "send"]);
        assert!(matches!(&out[2], Out::Send(r) if r.action_id == "c:relock"));
        // Open again, a relock waits, the contact goes offline: it goes, reported.
        d.contact("front-contact", false, at(10_000));
        assert!(d.relock(relock("d:relock")).is_empty());
        assert_eq!(
            kinds(&d.contact_offline("front-contact")),
            ["blind", "send"]
        );
        assert_eq!(d.view("front"), Some("unknown"));
        // An offline contact's door is not held open.
        assert_eq!(d.next_deadline(), None);
    }

    #[test]
    fn passage_excuses_openings_and_held_open_and_the_grace_follows_its_end() {
        let mut d = doors();
        d.contact("front-contact", true, at(0));
        d.set_held("front", true, at(0));
        assert_eq!(
            kinds(&d.contact("front-contact", false, at(1_000_000))),
            ["door.opened"]
        );
        assert_eq!(d.next_deadline(), None);
        d.contact("front-contact", true, at(1_001_000));
        d.set_held("front", false, at(2_000_000));
        assert_eq!(
            kinds(&d.contact("front-contact", false, at(2_005_000))),
            ["door.opened"]
        );
    }

    #[test]
    fn a_restart_neither_repeats_an_opening_nor_misses_one() {
        let spec = || DoorSpec {
            door: "front".into(),
            contact: "front-contact".into(),
            held_open_after: Duration::from_secs(60),
            pulse: Duration::from_secs(5),
            fixed_pulse: true,
        };
        let open = DoorRecord {
            closed: Some(false),
            opened_at: Some(at(0)),
            held_reported: true,
        };
        let mut d = Doors::new([spec()], Duration::from_secs(10), [("front".into(), open)]);
        assert!(kinds(&d.contact("front-contact", false, at(100_000))).is_empty());
        assert_eq!(d.next_deadline(), None);
        let closed = DoorRecord {
            closed: Some(true),
            ..DoorRecord::default()
        };
        let mut d = Doors::new(
            [spec()],
            Duration::from_secs(10),
            [("front".into(), closed)],
        );
        assert_eq!(
            kinds(&d.contact("front-contact", false, at(100_000))),
            ["door.opened", "door.forced_open"]
        );
    }
}
