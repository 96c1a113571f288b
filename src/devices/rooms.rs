//! The hub's rooms: the rooms machine (`crate::rooms`) fed with the hub's inputs, its effects
//! carried over into the hub's.

use super::*;
use crate::rooms::{self, Input as RoomInput};
use crate::wire::{Passage, PassageState};

impl Hub {
    /// The rooms' schedule as stored (bookings and their marks).
    pub fn set_schedule(&mut self, schedule: crate::schedule::Schedule) {
        self.rooms.set_schedule(schedule);
    }

    /// Feeds the rooms machine and carries its effects over into the hub's.
    pub(super) fn rooms(&mut self, input: RoomInput<'_>) -> Effects {
        self.rooms_touched = true;
        let mut out = Effects::default();
        for effect in self.rooms.handle(input, &self.ctx) {
            out.push(match effect {
                rooms::Effect::Event(e) => Effect::Event(e),
                rooms::Effect::Mark(id, marks) => Effect::Mark(id, marks),
                rooms::Effect::Forget(id) => Effect::Forget(id),
                rooms::Effect::Publish(p) => Effect::Publish(p),
                rooms::Effect::Malformed => {
                    self.counters.malformed.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
            });
        }
        out
    }

    /// The doors held by passage mode as stored: each hold is sent again at the next input
    /// (a relay board is switched off when its port opens), with no new `access.passage`.
    pub fn set_passage(&mut self, holds: impl IntoIterator<Item = (String, doors::PassageHold)>) {
        for (door, hold) in holds {
            if self.index.contains_key(&door) {
                self.doors.set_held(&door, true, self.ctx.now);
                self.rehold.insert(door.clone());
                self.held.insert(door, hold.booking_id);
                self.rooms_touched = true;
            }
        }
    }

    /// Passage mode (DESIGN §3): each door that can be held follows the passage booking of its
    /// room — held unlocked from the check-in, let go at the end (locked once it is shut) or
    /// by a lockdown (whose own lock is sent at once), held again after the lift while the
    /// booking runs. Each change is one `access.passage` and one action with source `passage`.
    pub(super) fn passage(&mut self, now: Millis) -> Effects {
        let mut out = Effects::default();
        let doors: Vec<(String, String)> = self
            .config
            .devices
            .iter()
            .filter(|d| d.can_hold())
            .map(|d| (d.id.clone(), self.room_of(d).to_owned()))
            .collect();
        for (door, room) in doors {
            let locked_down = self.lockdowns.iter().any(|l| l.covers(&room));
            let want = match locked_down {
                true => None,
                false => self.rooms.passage(&room, now),
            };
            let have = self.held.get(&door).cloned();
            if want == have {
                if let (Some(b), true) = (want, self.rehold.remove(&door)) {
                    out.merge(self.start(self.passage_request(&door, &b, Command::Unlock), now));
                }
                continue;
            }
            self.rehold.remove(&door);
            match (&have, want) {
                (_, Some(b)) => {
                    self.held.insert(door.clone(), b.clone());
                    self.doors.set_held(&door, true, now);
                    out.push(Effect::Passage(
                        door.clone(),
                        Some(doors::PassageHold {
                            booking_id: b.clone(),
                        }),
                    ));
                    out.0
                        .extend(self.passage_event(&door, &b, PassageState::Unlocked, now));
                    out.merge(self.start(self.passage_request(&door, &b, Command::Unlock), now));
                }
                (Some(b), None) => {
                    self.held.remove(&door);
                    self.doors.set_held(&door, false, now);
                    out.push(Effect::Passage(door.clone(), None));
                    if locked_down {
                        // The lockdown's lock went out already (source `lockdown`).
                        out.0
                            .extend(self.passage_event(&door, b, PassageState::Locked, now));
                    } else {
                        // Locked once shut: its `access.passage` goes with the lock.
                        let outs = self
                            .doors
                            .relock(self.passage_request(&door, b, Command::Lock));
                        out.merge(self.door_effects(outs, now));
                    }
                }
                (None, None) => {}
            }
        }
        out
    }

    pub(super) fn passage_request(
        &self,
        door: &str,
        booking_id: &str,
        command: Command,
    ) -> Request {
        Request {
            action_id: (self.ctx.ids)(),
            device: door.to_owned(),
            command,
            source: actions::Source::Passage,
            booking_id: Some(booking_id.to_owned()),
            grant_id: None,
            duration_s: None,
        }
    }

    /// `access.passage` `locked` for a passage's end lock (`None` for any other request).
    pub(super) fn passage_ended(&self, lock: &Request, now: Millis) -> Option<Effect> {
        if lock.source != actions::Source::Passage {
            return None;
        }
        let booking = lock.booking_id.as_deref().unwrap_or_default();
        self.passage_event(&lock.device, booking, PassageState::Locked, now)
    }

    /// `access.passage` about `door`.
    pub(super) fn passage_event(
        &self,
        door: &str,
        booking_id: &str,
        state: PassageState,
        now: Millis,
    ) -> Option<Effect> {
        let device = self.device_ref(door)?;
        t::PassageChanged {
            door,
            booking_id,
            state: match state {
                PassageState::Unlocked => "unlocked",
                PassageState::Locked => "locked",
            },
        }
        .emit();
        let data = Data::Passage(Passage {
            booking_id: booking_id.to_owned(),
            state,
        });
        Some(Effect::Event(NewEvent::new(data, Some(device), now)))
    }
}
