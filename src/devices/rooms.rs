//! The hub's rooms: the schedule, what each panel displays, the status moments, and a panel's
//! check-in / end / extend.

use super::*;
use crate::telemetry::{events as t, InternalEvent};
use crate::wire::{panel, MeetingStatus};

impl Hub {
    /// The rooms' schedule as stored (bookings and their marks).
    pub fn set_schedule(&mut self, schedule: crate::schedule::Schedule) {
        self.schedule = schedule;
    }

    /// A booking as ZenCore now describes it.
    pub fn set_booking(&mut self, booking: crate::schedule::Booking, now: Millis) -> Effects {
        self.schedule.set(booking);
        self.tick(now)
    }

    /// The device's room, as the access decision sees it (`places`).
    pub(super) fn room_of(&self, device: &str) -> String {
        self.places
            .iter()
            .find(|p| p.id == device)
            .map(|p| p.meeting_space_id.clone())
            .unwrap_or_else(|| self.config.controller.meeting_space_id.clone())
    }

    /// A state ZenCore set for a room's panels: shown from now on, over the schedule's view,
    /// until that view changes. The panels' one writer of `display` stays the hub.
    pub fn set_explicit(&mut self, explicit: panel::Explicit, now: Millis) -> Effects {
        let schedule = self.schedule.display(&explicit.meeting_space_id, now);
        self.explicit
            .insert(explicit.meeting_space_id.clone(), (explicit, schedule));
        Effects(
            self.displays(now)
                .into_iter()
                .map(Effect::Publish)
                .collect(),
        )
    }

    /// The schedule's moments due at `now`, and the displays that changed.
    pub(super) fn schedule_tick(&mut self, now: Millis) -> Effects {
        let updates = self.schedule.tick(now);
        let mut out = self.status_events(updates);
        for id in self.schedule.expired(now) {
            self.schedule.forget(&id);
            out.push(Effect::Forget(id));
        }
        self.marks_and_displays(&mut out, now);
        out
    }

    /// `display` messages for panels whose schedule view changed (all of them the first time).
    pub(super) fn displays(&mut self, now: Millis) -> Vec<Outgoing> {
        let panels: Vec<String> = self
            .config
            .devices
            .iter()
            .filter(|d| d.driver == Driver::ZenedgePanel)
            .map(|d| d.id.clone())
            .collect();
        let mut out = Vec::new();
        for panel in panels {
            let room = self.room_of(&panel);
            let schedule = self.schedule.display(&room, now);
            // ZenCore's explicit state holds until the schedule's own view of the room moves on.
            if self
                .explicit
                .get(&room)
                .is_some_and(|(_, at)| *at != schedule)
            {
                self.explicit.remove(&room);
            }
            let view = match self.explicit.get(&room) {
                Some((explicit, _)) => schedule.with_explicit(explicit),
                None => schedule,
            };
            if self.displays.get(&panel) == Some(&view) {
                continue;
            }
            out.push(Outgoing {
                topic: format!("{}/display", drivers::panel_prefix(&self.config, &panel)),
                payload: panel::to_bytes(&view),
                retain: true,
            });
            self.displays.insert(panel, view);
        }
        out
    }

    pub(super) fn status_events(&self, updates: Vec<crate::schedule::StatusUpdate>) -> Effects {
        use crate::schedule::Source;
        let mut out = Effects::default();
        for u in updates {
            let device = u.device_id.as_deref().and_then(|d| self.device_ref(d));
            let data = Data::MeetingStatus(MeetingStatus {
                booking_id: u.booking_id.clone(),
                status: u.status,
                source: u.source,
                device_id: u.device_id.clone(),
                end_time: u.end_time,
            });
            let mut e = NewEvent::new(data, device, u.at).in_space(&u.meeting_space_id);
            if u.source == Source::Scheduler {
                // The same moment made again (a flush torn by a crash) keeps its id.
                e = e.with_id(crate::event::moment_id(
                    &self.config.controller.id,
                    &u.booking_id,
                    u.status,
                    u.at,
                ));
            }
            t::RoomStatus {
                booking_id: &u.booking_id,
                status: u.status,
                source: u.source.as_str(),
            }
            .emit();
            out.push(Effect::Event(e));
        }
        out
    }

    /// A panel's `check_in` / `end_meeting` / `extend`.
    pub(super) fn panel_action(&mut self, panel: &str, v: &Value, now: Millis) -> Effects {
        use crate::schedule::Action;
        let request_id = v.get("request_id").cloned().unwrap_or(Value::Null);
        let name = v.get("action").and_then(Value::as_str).unwrap_or("");
        let action = match name {
            "check_in" => Some(Action::CheckIn),
            "end_meeting" => Some(Action::EndMeeting),
            "extend" => v
                .get("minutes")
                .and_then(Value::as_u64)
                .map(|minutes| Action::Extend { minutes }),
            _ => None,
        };
        let booking_id = v.get("booking_id").and_then(Value::as_str);
        let result = match action {
            Some(a) => self
                .schedule
                .action(&self.room_of(panel), panel, booking_id, a, now)
                .map_err(|r| r.as_str()),
            None => {
                self.counters.malformed.fetch_add(1, Ordering::Relaxed);
                t::PanelActionMalformed {
                    device: panel,
                    action: name,
                }
                .emit();
                Err("malformed")
            }
        };
        let (mut out, result, reason) = match result {
            Ok(updates) => (self.status_events(updates), "ok", None),
            Err(reason) => (Effects::default(), "refused", Some(reason)),
        };
        let answer = panel::ActionAnswer {
            request_id,
            action: name.to_owned(),
            result,
            reason,
        };
        out.push(Effect::Publish(Outgoing {
            topic: format!("{}/feedback", drivers::panel_prefix(&self.config, panel)),
            payload: panel::to_bytes(&answer),
            retain: false,
        }));
        self.marks_and_displays(&mut out, now);
        out
    }

    /// The schedule's changed marks (to store) and the displays that changed (to publish).
    fn marks_and_displays(&mut self, out: &mut Effects, now: Millis) {
        for (id, marks) in self.schedule.take_dirty() {
            out.push(Effect::Mark(id, marks));
        }
        for display in self.displays(now) {
            out.push(Effect::Publish(display));
        }
    }
}
