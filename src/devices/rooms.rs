//! The hub's rooms: the rooms machine (`crate::rooms`) fed with the hub's inputs, its effects
//! carried over into the hub's.

use super::*;
use crate::rooms::{self, Input as RoomInput};

impl Hub {
    /// The rooms' schedule as stored (bookings and their marks).
    pub fn set_schedule(&mut self, schedule: crate::schedule::Schedule) {
        self.rooms.set_schedule(schedule);
    }

    /// Feeds the rooms machine and carries its effects over into the hub's.
    pub(super) fn rooms(&mut self, input: RoomInput<'_>) -> Effects {
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
}
