//! The rooms machine: the schedule (ZenCore's bookings and the room's marks), what each panel
//! displays, the status moments, and a panel's check-in / end / extend.
//!
//! Pure: a booking, ZenCore's explicit state, a panel's action or the passing of time goes in;
//! the events and marks to store, the bookings to forget and the messages to publish come out as
//! [`Effect`]s. Time comes from the [`Ctx`] of each input. It is the one writer of every panel's
//! retained `display`.

use std::collections::HashMap;

use serde_json::Value;

use crate::config::{Config, Driver};
use crate::devices::drivers::{panel_prefix, Outgoing};
use crate::event::{Ctx, DeviceRef, Millis};
use crate::schedule::{Action, Booking, Marks, Schedule, Source, StatusUpdate};
use crate::telemetry::{events as t, InternalEvent};
use crate::wire::panel::{self, ActionAnswer, ActionResult, Display, Explicit};
use crate::wire::{Data, MeetingStatus, NewEvent};

/// Everything that can happen to the rooms.
#[derive(Debug)]
pub enum Input<'a> {
    /// A booking as ZenCore now describes it (already durable).
    Booking(Booking),
    /// ZenCore's state for a room's panels.
    Explicit(Explicit),
    /// A panel's `check_in` / `end_meeting` / `extend` message.
    PanelAction { panel: &'a str, message: &'a Value },
    /// Time passed: the schedule's moments.
    Tick,
    /// The lockdowns in force now (the whole set): their panels show `lockdown`.
    Lockdowns(Vec<crate::wire::Lockdown>),
}

/// What the caller must do, in this order.
#[derive(Debug, Clone)]
pub enum Effect {
    /// A status moment's event, stored with the marks that record it.
    Event(NewEvent),
    /// A booking's marks to store.
    Mark(String, Marks),
    /// A booking long over, to delete.
    Forget(String),
    /// A panel's `display` (retained) or a `feedback` answer, published after the commit.
    Publish(Outgoing),
    /// A panel action that was not one: count it.
    Malformed,
}

/// A panel: its room and the prefix of its topics.
#[derive(Debug, Clone)]
struct Panel {
    id: String,
    room: String,
    prefix: String,
}

pub struct Machine {
    schedule: Schedule,
    panels: Vec<Panel>,
    /// Every configured device, for the events of moments a panel made.
    devices: HashMap<String, DeviceRef>,
    controller_id: String,
    /// What each panel's `display` was last sent (the schedule's view, or ZenCore's over it).
    displays: HashMap<String, Display>,
    /// ZenCore's explicit state per room, with the schedule's view it was set over.
    explicit: HashMap<String, (Explicit, Display)>,
    /// The latest time the machine was given (for the schedule's next deadline).
    last_now: Millis,
    /// Lockdowns in force: shown before anything else.
    lockdowns: Vec<crate::wire::Lockdown>,
}

impl Machine {
    pub fn new(config: &Config, now: Millis) -> Machine {
        let room = config.controller.meeting_space_id.clone();
        let panels = config
            .devices
            .iter()
            .filter(|d| d.driver() == Driver::ZenedgePanel)
            .map(|d| Panel {
                id: d.id.clone(),
                room: d.meeting_space_id.clone().unwrap_or_else(|| room.clone()),
                prefix: panel_prefix(config, &d.id),
            })
            .collect();
        Machine {
            schedule: Schedule::new([], [], config.scheduler.no_show_release),
            panels,
            devices: config
                .devices
                .iter()
                .map(|d| (d.id.clone(), DeviceRef::of(d)))
                .collect(),
            controller_id: config.controller.id.clone(),
            displays: HashMap::new(),
            explicit: HashMap::new(),
            last_now: now,
            lockdowns: Vec::new(),
        }
    }

    /// The rooms' schedule as stored (bookings and their marks).
    pub fn set_schedule(&mut self, schedule: Schedule) {
        self.schedule = schedule;
    }

    /// The passage booking holding `room`'s doors at `now`, if any.
    pub fn passage(&self, room: &str, now: Millis) -> Option<String> {
        self.schedule.passage(room, now).map(String::from)
    }

    pub fn next_deadline(&self) -> Option<Millis> {
        self.schedule.next_deadline(self.last_now)
    }

    pub fn handle(&mut self, input: Input<'_>, ctx: &Ctx) -> Vec<Effect> {
        let now = ctx.now;
        self.last_now = now;
        match input {
            Input::Booking(booking) => {
                self.schedule.set(booking);
                self.tick(now)
            }
            Input::Explicit(explicit) => self.set_explicit(explicit, now),
            Input::PanelAction { panel, message } => self.panel_action(panel, message, now),
            Input::Tick => self.tick(now),
            Input::Lockdowns(l) => {
                self.lockdowns = l;
                self.displays(now)
            }
        }
    }

    /// A state ZenCore set for a room's panels: shown from now on, over the schedule's view,
    /// until that view changes.
    fn set_explicit(&mut self, explicit: Explicit, now: Millis) -> Vec<Effect> {
        let schedule = self.schedule.display(&explicit.meeting_space_id, now);
        self.explicit
            .insert(explicit.meeting_space_id.clone(), (explicit, schedule));
        self.displays(now)
    }

    /// The schedule's moments due at `now`, and the displays that changed.
    fn tick(&mut self, now: Millis) -> Vec<Effect> {
        let updates = self.schedule.tick(now);
        let mut out = self.status_events(updates);
        for id in self.schedule.expired(now) {
            self.schedule.forget(&id);
            out.push(Effect::Forget(id));
        }
        self.marks_and_displays(&mut out, now);
        out
    }

    /// `display` messages for panels whose view changed (all of them the first time).
    fn displays(&mut self, now: Millis) -> Vec<Effect> {
        let mut out = Vec::new();
        for panel in &self.panels {
            let schedule = self.schedule.display(&panel.room, now);
            // ZenCore's explicit state holds until the schedule's own view of the room moves on.
            if self
                .explicit
                .get(&panel.room)
                .is_some_and(|(_, at)| *at != schedule)
            {
                self.explicit.remove(&panel.room);
            }
            // A lockdown first, then ZenCore's explicit state, then the schedule (DESIGN §2).
            let lockdown = self.lockdowns.iter().find(|l| l.covers(&panel.room));
            let view = match (lockdown, self.explicit.get(&panel.room)) {
                (Some(l), _) => Display::lockdown(l.reason.as_deref()),
                (None, Some((explicit, _))) => schedule.with_explicit(explicit),
                (None, None) => schedule,
            };
            if self.displays.get(&panel.id) == Some(&view) {
                continue;
            }
            out.push(Effect::Publish(Outgoing {
                topic: format!("{}/display", panel.prefix),
                payload: panel::to_bytes(&view),
                retain: true,
            }));
            self.displays.insert(panel.id.clone(), view);
        }
        out
    }

    fn status_events(&self, updates: Vec<StatusUpdate>) -> Vec<Effect> {
        let mut out = Vec::new();
        for u in updates {
            let device = u
                .device_id
                .as_deref()
                .and_then(|d| self.devices.get(d))
                .cloned();
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
                    &self.controller_id,
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

    /// A panel's `check_in` / `end_meeting` / `extend`, answered on its `feedback` topic.
    fn panel_action(&mut self, panel: &str, v: &Value, now: Millis) -> Vec<Effect> {
        // Only a configured panel's topics carry panel actions.
        let Some(Panel { room, prefix, .. }) = self.panels.iter().find(|p| p.id == panel).cloned()
        else {
            return Vec::new();
        };
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
        let mut out = Vec::new();
        let result = match action {
            Some(a) => self
                .schedule
                .action(&room, panel, booking_id, a, now)
                .map_err(|r| r.as_str()),
            None => {
                out.push(Effect::Malformed);
                t::PanelActionMalformed {
                    device: panel,
                    action: name,
                }
                .emit();
                Err("malformed")
            }
        };
        let (result, reason) = match result {
            Ok(updates) => {
                out.extend(self.status_events(updates));
                (ActionResult::Ok, None)
            }
            Err(reason) => (ActionResult::Refused, Some(reason)),
        };
        out.push(Effect::Publish(Outgoing {
            topic: format!("{prefix}/feedback"),
            payload: panel::to_bytes(&ActionAnswer {
                request_id,
                action: name.to_owned(),
                result,
                reason,
            }),
            retain: false,
        }));
        self.marks_and_displays(&mut out, now);
        out
    }

    /// The schedule's changed marks (to store) and the displays that changed (to publish).
    fn marks_and_displays(&mut self, out: &mut Vec<Effect>, now: Millis) {
        for (id, marks) in self.schedule.take_dirty() {
            out.push(Effect::Mark(id, marks));
        }
        out.extend(self.displays(now));
    }
}

#[cfg(test)]
mod tests;
