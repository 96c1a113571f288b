//! The rooms' own schedule: which booking is current and which is next, what the panels show,
//! and the status updates ZenCore gets (`meeting.status_update`).
//!
//! Pure: bookings (from ZenCore's commands), panel actions and the time go in; status updates and
//! displays come out. Two records per booking, each with one writer: the [`Booking`] as ZenCore
//! described it (written by the inbound endpoint) and its [`Marks`] — check-in, early end,
//! extension and which moments were already reported (written by the device hub, in the flush
//! that stores the status events), so each moment is reported exactly once, across restarts.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::event::Millis;
use crate::wire::panel::{Brief, Display};

/// A panel shows a booking as `reserved` this long before it starts (ZenCore's T-15).
pub const RESERVED_BEFORE: Duration = Duration::from_secs(15 * 60);
/// Check-in opens this long before the start.
pub const CHECK_IN_BEFORE: Duration = Duration::from_secs(15 * 60);
/// The longest single extension a panel may ask for.
pub const MAX_EXTEND_MINUTES: u64 = 240;
/// Bookings that ended this long ago are forgotten.
pub const KEEP_AFTER_END: Duration = Duration::from_secs(24 * 3600);

/// A booking as ZenCore described it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Booking {
    pub booking_id: String,
    pub meeting_space_id: String,
    pub start: Millis,
    pub end: Millis,
    #[serde(default)]
    pub title: Option<String>,
    /// `booking.cancelled` or `booking.end` arrived: the booking no longer holds the room.
    #[serde(default)]
    pub closed: Option<Millis>,
    /// ZenCore's T-0 arrived (DESIGN §2): the booking holds the room from then, whatever
    /// `start` says (the controller's clock or ZenCore's may be off).
    #[serde(default)]
    pub started: Option<Millis>,
    /// Passage mode: the room's doors stay unlocked from check-in to the end (DESIGN §3).
    /// `None`: not said (a `booking.start` does not carry it).
    #[serde(default)]
    pub unlock_during_meeting: Option<bool>,
}

impl Booking {
    /// When it begins to hold the room: its start, or ZenCore's T-0 if that came first.
    pub fn begins(&self) -> Millis {
        self.started.map_or(self.start, |s| s.min(self.start))
    }

    /// Whether its doors are held unlocked for the meeting (passage mode).
    pub fn passage(&self) -> bool {
        self.unlock_during_meeting == Some(true)
    }
}

impl crate::record::Record for Booking {
    const FAMILY: &'static str = "booking";
    const VERSION: u32 = 1;
}

/// What happened to a booking in the room, and which moments were reported.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Marks {
    pub checked_in: Option<Millis>,
    pub ended_early: Option<Millis>,
    pub extended_end: Option<Millis>,
    pub in_use: bool,
    pub no_show: bool,
    pub available: bool,
}

impl crate::record::Record for Marks {
    const FAMILY: &'static str = "booking.marks";
    const VERSION: u32 = 1;
}

pub use crate::wire::StatusSource as Source;

/// One `meeting.status_update`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusUpdate {
    pub booking_id: String,
    pub meeting_space_id: String,
    pub status: &'static str,
    pub source: Source,
    /// The panel, for panel actions.
    pub device_id: Option<String>,
    /// The new end, for `extended`.
    pub end_time: Option<Millis>,
    pub at: Millis,
}

/// A panel's request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    CheckIn,
    EndMeeting,
    Extend { minutes: u64 },
}

/// Why a panel action was refused (the `reason` in the panel's feedback).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    NoBooking,
    NotStarted,
    Over,
    Conflict,
    BadMinutes,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::NoBooking => "no_booking",
            Refusal::NotStarted => "not_started",
            Refusal::Over => "over",
            Refusal::Conflict => "conflicts_with_next_booking",
            Refusal::BadMinutes => "bad_minutes",
        }
    }
}

#[derive(Debug, Default)]
pub struct Schedule {
    bookings: BTreeMap<String, Booking>,
    marks: BTreeMap<String, Marks>,
    no_show_release: Duration,
    /// Marks changed since the last [`Schedule::take_dirty`].
    dirty: Vec<String>,
}

impl Schedule {
    pub fn new(
        bookings: impl IntoIterator<Item = Booking>,
        marks: impl IntoIterator<Item = (String, Marks)>,
        no_show_release: Duration,
    ) -> Schedule {
        Schedule {
            bookings: bookings
                .into_iter()
                .map(|b| (b.booking_id.clone(), b))
                .collect(),
            marks: marks.into_iter().collect(),
            no_show_release,
            dirty: Vec::new(),
        }
    }

    /// A booking created, confirmed, started, moved, ended or cancelled by ZenCore.
    pub fn set(&mut self, booking: Booking) {
        self.bookings.insert(booking.booking_id.clone(), booking);
    }

    pub fn get(&self, booking_id: &str) -> Option<&Booking> {
        self.bookings.get(booking_id)
    }

    /// Marks to store (with the status events made since the last call).
    pub fn take_dirty(&mut self) -> Vec<(String, Marks)> {
        let ids = std::mem::take(&mut self.dirty);
        ids.into_iter()
            .filter_map(|id| self.marks.get(&id).map(|m| (id, m.clone())))
            .collect()
    }

    fn mark(&mut self, id: &str) -> &mut Marks {
        self.dirty.push(id.to_owned());
        self.marks.entry(id.to_owned()).or_default()
    }

    fn marks_of(&self, id: &str) -> Marks {
        self.marks.get(id).cloned().unwrap_or_default()
    }

    /// When the booking stops holding the room: its (extended) end, an early end, the no-show
    /// release, or ZenCore closing it.
    fn release_at(&self, b: &Booking, m: &Marks) -> Millis {
        let mut t = m.extended_end.map_or(b.end, |e| e.max(b.end));
        if let Some(e) = m.ended_early {
            t = t.min(e);
        }
        if let Some(c) = b.closed {
            t = t.min(c);
        }
        if m.no_show {
            t = t.min(self.no_show_at(b));
        }
        t
    }

    fn no_show_at(&self, b: &Booking) -> Millis {
        b.start.saturating_add(self.no_show_release)
    }

    /// The booking holding `room` at `now`.
    fn current<'a>(&'a self, room: &'a str, now: Millis) -> Option<&'a Booking> {
        self.in_room(room)
            .find(|b| b.begins() <= now && now < self.release_at(b, &self.marks_of(&b.booking_id)))
    }

    fn in_room<'a>(&'a self, room: &'a str) -> impl Iterator<Item = &'a Booking> + 'a {
        let mut v: Vec<&Booking> = self
            .bookings
            .values()
            .filter(move |b| b.meeting_space_id == room)
            .collect();
        v.sort_by_key(|b| (b.start, b.booking_id.clone()));
        v.into_iter()
    }

    /// Bookings still to come in `room` after `now` (not closed).
    fn upcoming<'a>(
        &'a self,
        room: &'a str,
        now: Millis,
    ) -> impl Iterator<Item = &'a Booking> + 'a {
        self.in_room(room)
            .filter(move |b| b.begins() > now && b.closed.is_none())
    }

    /// The moments due at `now`: `in_use` at the start, `no_show` when nobody checked in within
    /// the release, `available` at the end or right after an early end. When several are due
    /// at once (after downtime or a clock jump) only the latest is reported; a booking that
    /// began and ended unseen reports nothing.
    pub fn tick(&mut self, now: Millis) -> Vec<StatusUpdate> {
        let mut out = Vec::new();
        let ids: Vec<String> = self.bookings.keys().cloned().collect();
        for id in ids {
            let Some(b) = self.bookings.get(&id).cloned() else {
                continue;
            };
            let m = self.marks_of(&id);
            if m.in_use && (m.no_show || m.available) {
                continue;
            }
            if b.closed.is_some_and(|c| c <= b.begins()) && !m.in_use {
                // Cancelled (or ended) before it began: nothing to report.
                continue;
            }
            let update = |status, at| StatusUpdate {
                booking_id: id.clone(),
                meeting_space_id: b.meeting_space_id.clone(),
                status,
                source: Source::Scheduler,
                device_id: None,
                end_time: None,
                at,
            };
            let release = self.release_at(&b, &m);
            let no_show_due = !self.no_show_release.is_zero()
                && m.checked_in.is_none()
                && m.ended_early.is_none()
                && now >= self.no_show_at(&b)
                && self.no_show_at(&b) < release;
            let end_due = now >= release && !m.no_show;
            if end_due && !m.available {
                let was_in_use = m.in_use;
                let mk = self.mark(&id);
                mk.in_use = true;
                mk.available = true;
                // ZenCore closed it: it knows; only the scheduler's own end is reported.
                if was_in_use && b.closed.is_none_or(|c| c > release) {
                    out.push(update("available", release));
                }
            } else if no_show_due && !m.no_show {
                let mk = self.mark(&id);
                mk.in_use = true;
                mk.no_show = true;
                out.push(update("no_show", self.no_show_at(&b)));
            } else if now >= b.begins() && !m.in_use && now < release {
                self.mark(&id).in_use = true;
                out.push(update("in_use", b.begins()));
            }
        }
        out
    }

    /// A panel in `room` asks for `action` on `booking_id` (or the room's current booking).
    pub fn action(
        &mut self,
        room: &str,
        panel: &str,
        booking_id: Option<&str>,
        action: Action,
        now: Millis,
    ) -> Result<Vec<StatusUpdate>, Refusal> {
        let b = match booking_id {
            Some(id) => self
                .bookings
                .get(id)
                .filter(|b| b.meeting_space_id == room)
                .cloned(),
            None => self.current(room, now).cloned().or_else(|| {
                // Before the start, check-in finds the booking about to begin.
                self.upcoming(room, now)
                    .next()
                    .filter(|b| now.saturating_add(CHECK_IN_BEFORE) >= b.start)
                    .cloned()
            }),
        }
        .ok_or(Refusal::NoBooking)?;
        let id = b.booking_id.clone();
        let m = self.marks_of(&id);
        let release = self.release_at(&b, &m);
        if b.closed.is_some() || m.no_show || m.ended_early.is_some() || now >= release {
            return Err(Refusal::Over);
        }
        let update = |status, end_time| StatusUpdate {
            booking_id: id.clone(),
            meeting_space_id: b.meeting_space_id.clone(),
            status,
            source: Source::Panel,
            device_id: Some(panel.to_owned()),
            end_time,
            at: now,
        };
        match action {
            Action::CheckIn => {
                if now.saturating_add(CHECK_IN_BEFORE) < b.start {
                    return Err(Refusal::NotStarted);
                }
                if m.checked_in.is_some() {
                    // Pressing twice is not news.
                    return Ok(Vec::new());
                }
                self.mark(&id).checked_in = Some(now);
                Ok(vec![update("checked_in", None)])
            }
            Action::EndMeeting => {
                if now < b.begins() {
                    return Err(Refusal::NotStarted);
                }
                let mk = self.mark(&id);
                mk.ended_early = Some(now);
                mk.in_use = true;
                mk.available = true;
                let mut available = update("available", None);
                available.source = Source::Scheduler;
                available.device_id = None;
                Ok(vec![update("ended_early", None), available])
            }
            Action::Extend { minutes } => {
                if minutes == 0 || minutes > MAX_EXTEND_MINUTES {
                    return Err(Refusal::BadMinutes);
                }
                if now < b.begins() {
                    return Err(Refusal::NotStarted);
                }
                let end = m.extended_end.unwrap_or(b.end).max(b.end);
                let new_end = end.saturating_add(Duration::from_secs(minutes * 60));
                let conflict = self.in_room(room).any(|o| {
                    o.booking_id != id && o.closed.is_none() && o.start >= end && o.start < new_end
                });
                if conflict {
                    return Err(Refusal::Conflict);
                }
                self.mark(&id).extended_end = Some(new_end);
                Ok(vec![update("extended", Some(new_end))])
            }
        }
    }

    /// The passage booking holding `room`'s doors unlocked at `now` (DESIGN §3): one that asked
    /// for passage mode, was checked in and has not ended (or ended early, or been closed).
    pub fn passage<'a>(&'a self, room: &'a str, now: Millis) -> Option<&'a str> {
        self.in_room(room)
            .find(|b| {
                let m = self.marks_of(&b.booking_id);
                b.passage()
                    && m.checked_in.is_some_and(|c| c <= now)
                    && !m.no_show
                    && now < self.release_at(b, &m)
            })
            .map(|b| b.booking_id.as_str())
    }

    /// What the panels of `room` show at `now`.
    pub fn display(&self, room: &str, now: Millis) -> Display {
        let current = self.current(room, now);
        let reserved = match current {
            Some(_) => None,
            None => self
                .upcoming(room, now)
                .next()
                .filter(|b| now.saturating_add(RESERVED_BEFORE) >= b.start),
        };
        let (state, shown) = match (current, reserved) {
            (Some(b), _) => ("in_use", Some(b)),
            (None, Some(b)) => ("reserved", Some(b)),
            (None, None) => ("available", None),
        };
        // The next meeting to begin (a reserved booking is both shown and next).
        let next = self
            .upcoming(room, now)
            .find(|b| current.is_none_or(|c| c.booking_id != b.booking_id));
        let end_of = |b: &Booking| {
            let m = self.marks_of(&b.booking_id);
            m.extended_end.unwrap_or(b.end).max(b.end)
        };
        Display {
            state: state.to_owned(),
            booking_id: shown.map(|b| b.booking_id.clone()),
            start_time: shown.map(|b| b.start),
            end_time: shown.map(end_of),
            title: shown.and_then(|b| b.title.clone()),
            checked_in: shown.is_some_and(|b| self.marks_of(&b.booking_id).checked_in.is_some()),
            message: Value::Null,
            next: next.map(|b| Brief {
                booking_id: b.booking_id.clone(),
                start_time: b.start,
                end_time: end_of(b),
                title: b.title.clone(),
            }),
        }
    }

    /// The next moment after `now` when a status or a display may change.
    pub fn next_deadline(&self, now: Millis) -> Option<Millis> {
        self.bookings
            .values()
            .flat_map(|b| {
                let m = self.marks_of(&b.booking_id);
                let before = Millis(b.start.0.saturating_sub(RESERVED_BEFORE.as_millis() as u64));
                [
                    before,
                    b.begins(),
                    self.no_show_at(b),
                    self.release_at(b, &m),
                ]
            })
            .filter(|&t| t > now)
            .min()
    }

    /// Bookings over for [`KEEP_AFTER_END`]: the caller deletes both records.
    pub fn expired(&self, now: Millis) -> Vec<String> {
        self.bookings
            .values()
            .filter(|b| {
                let m = self.marks_of(&b.booking_id);
                self.release_at(b, &m).saturating_add(KEEP_AFTER_END) < now
            })
            .map(|b| b.booking_id.clone())
            .collect()
    }

    pub fn forget(&mut self, booking_id: &str) {
        self.bookings.remove(booking_id);
        self.marks.remove(booking_id);
    }

    /// Rooms that have bookings (their panels get displays).
    pub fn rooms(&self) -> Vec<String> {
        let mut r: Vec<String> = self
            .bookings
            .values()
            .map(|b| b.meeting_space_id.clone())
            .collect();
        r.sort();
        r.dedup();
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(s: &Schedule, room: &str, at: Millis) -> Value {
        serde_json::to_value(s.display(room, at)).unwrap()
    }

    const MIN: u64 = 60_000;
    const T0: u64 = 1_800_000_000_000;

    fn at(min: i64) -> Millis {
        Millis((T0 as i64 + min * MIN as i64) as u64)
    }

    fn booking(id: &str, start: i64, end: i64) -> Booking {
        Booking {
            booking_id: id.into(),
            meeting_space_id: "room".into(),
            start: at(start),
            end: at(end),
            title: None,
            closed: None,
            started: None,
            unlock_during_meeting: None,
        }
    }

    fn statuses(u: &[StatusUpdate]) -> Vec<String> {
        u.iter()
            .map(|u| format!("{} {} {}", u.booking_id, u.status, u.source.as_str()))
            .collect()
    }

    fn schedule(bookings: Vec<Booking>) -> Schedule {
        Schedule::new(bookings, [], Duration::from_secs(10 * 60))
    }

    /// Ticks every minute from `from` to `to` and collects the updates.
    fn run(s: &mut Schedule, from: i64, to: i64) -> Vec<String> {
        let mut out = Vec::new();
        for m in from..=to {
            out.extend(statuses(&s.tick(at(m))));
        }
        out
    }

    #[test]
    fn no_check_in_is_a_no_show_and_the_room_is_free() {
        let mut s = schedule(vec![booking("b1", 0, 60)]);
        assert_eq!(view(&s, "room", at(-20))["state"], "available");
        assert_eq!(view(&s, "room", at(-20))["next"]["booking_id"], "b1");
        assert_eq!(view(&s, "room", at(-15))["state"], "reserved");
        assert_eq!(view(&s, "room", at(-15))["next"]["booking_id"], "b1");
        assert_eq!(run(&mut s, -20, 9), vec!["b1 in_use scheduler"]);
        assert_eq!(view(&s, "room", at(5))["state"], "in_use");
        assert_eq!(run(&mut s, 10, 90), vec!["b1 no_show scheduler"]);
        assert_eq!(view(&s, "room", at(11))["state"], "available");
    }

    #[test]
    fn check_in_before_the_start_then_the_end_frees_the_room() {
        let mut s = schedule(vec![booking("b1", 0, 30)]);
        assert_eq!(
            s.action("room", "p", None, Action::CheckIn, at(-20)),
            Err(Refusal::NoBooking)
        );
        let u = s
            .action("room", "p", None, Action::CheckIn, at(-5))
            .unwrap();
        assert_eq!(statuses(&u), vec!["b1 checked_in panel"]);
        assert_eq!(u[0].device_id.as_deref(), Some("p"));
        // Twice is not news.
        assert!(s
            .action("room", "p", None, Action::CheckIn, at(-4))
            .unwrap()
            .is_empty());
        assert_eq!(
            run(&mut s, -5, 40),
            vec!["b1 in_use scheduler", "b1 available scheduler"]
        );
        assert_eq!(view(&s, "room", at(31))["state"], "available");
    }

    #[test]
    fn ending_early_reports_both_and_frees_the_room_at_once() {
        let mut s = schedule(vec![booking("b1", 0, 60)]);
        run(&mut s, 0, 1);
        s.action("room", "p", None, Action::CheckIn, at(2)).unwrap();
        let u = s
            .action("room", "p", None, Action::EndMeeting, at(20))
            .unwrap();
        assert_eq!(
            statuses(&u),
            vec!["b1 ended_early panel", "b1 available scheduler"]
        );
        assert_eq!(view(&s, "room", at(20))["state"], "available");
        assert!(run(&mut s, 20, 120).is_empty());
        assert_eq!(
            s.action(
                "room",
                "p",
                Some("b1"),
                Action::Extend { minutes: 5 },
                at(21)
            ),
            Err(Refusal::Over)
        );
    }

    #[test]
    fn extend_is_refused_into_the_next_booking_and_back_to_back_works() {
        let mut s = schedule(vec![booking("b1", 0, 30), booking("b2", 30, 60)]);
        run(&mut s, 0, 1);
        s.action("room", "p", None, Action::CheckIn, at(1)).unwrap();
        assert_eq!(
            s.action("room", "p", None, Action::Extend { minutes: 15 }, at(20)),
            Err(Refusal::Conflict)
        );
        assert_eq!(view(&s, "room", at(20))["next"]["booking_id"], "b2");
        // Back to back: b1 ends exactly when b2 starts.
        let u = run(&mut s, 2, 31);
        assert_eq!(u, vec!["b1 available scheduler", "b2 in_use scheduler"]);
        assert_eq!(view(&s, "room", at(30))["booking_id"], "b2");
        // With room after, an extension moves the end and the display.
        let mut s = schedule(vec![booking("b1", 0, 30), booking("b2", 60, 90)]);
        run(&mut s, 0, 1);
        s.action("room", "p", None, Action::CheckIn, at(1)).unwrap();
        let u = s
            .action("room", "p", None, Action::Extend { minutes: 15 }, at(20))
            .unwrap();
        assert_eq!(statuses(&u), vec!["b1 extended panel"]);
        assert_eq!(u[0].end_time, Some(at(45)));
        assert_eq!(view(&s, "room", at(40))["state"], "in_use");
        assert_eq!(run(&mut s, 2, 44), Vec::<String>::new());
        assert_eq!(run(&mut s, 45, 45), vec!["b1 available scheduler"]);
        assert_eq!(
            s.action("room", "p", None, Action::Extend { minutes: 0 }, at(61)),
            Err(Refusal::BadMinutes)
        );
    }

    #[test]
    fn overlapping_bookings_each_report_their_own_moments() {
        let mut s = Schedule::new(
            vec![booking("b1", 0, 60), booking("b2", 30, 90)],
            [],
            Duration::ZERO,
        );
        assert_eq!(
            run(&mut s, 0, 100),
            vec![
                "b1 in_use scheduler",
                "b2 in_use scheduler",
                "b1 available scheduler",
                "b2 available scheduler"
            ]
        );
    }

    #[test]
    fn cancelled_before_or_during() {
        let mut s = schedule(vec![booking("b1", 10, 40), booking("b2", 50, 80)]);
        let mut c = booking("b1", 10, 40);
        c.closed = Some(at(0));
        s.set(c);
        assert_eq!(view(&s, "room", at(5))["state"], "available");
        assert_eq!(view(&s, "room", at(5))["next"]["booking_id"], "b2");
        assert_eq!(run(&mut s, 0, 49), Vec::<String>::new());
        assert_eq!(run(&mut s, 50, 55), vec!["b2 in_use scheduler"]);
        let mut c = booking("b2", 50, 80);
        c.closed = Some(at(56));
        s.set(c);
        assert_eq!(view(&s, "room", at(57))["state"], "available");
        // ZenCore ended it: it knows; nothing more is reported.
        assert_eq!(run(&mut s, 56, 100), Vec::<String>::new());
    }

    #[test]
    fn clock_jumps_report_only_the_latest_moment_and_never_twice() {
        let mut s = schedule(vec![booking("b1", 0, 60), booking("b2", 100, 160)]);
        // Forward over b1's start and release: only no_show.
        assert_eq!(statuses(&s.tick(at(20))), vec!["b1 no_show scheduler"]);
        // Back before the start: nothing again.
        assert!(s.tick(at(-5)).is_empty());
        assert!(s.tick(at(20)).is_empty());
        // Forward over all of b2: it began and ended unseen; nothing.
        assert!(s.tick(at(200)).is_empty());
        assert_eq!(view(&s, "room", at(200))["state"], "available");
    }

    #[test]
    fn marks_survive_a_restart_so_moments_are_not_repeated() {
        let mut s = schedule(vec![booking("b1", 0, 60)]);
        assert_eq!(statuses(&s.tick(at(0))), vec!["b1 in_use scheduler"]);
        let dirty = s.take_dirty();
        assert_eq!(dirty.len(), 1);
        let mut restarted = Schedule::new(
            vec![booking("b1", 0, 60)],
            dirty,
            Duration::from_secs(10 * 60),
        );
        assert!(restarted.tick(at(1)).is_empty());
        assert_eq!(view(&restarted, "room", at(1))["state"], "in_use");
        assert_eq!(
            statuses(&restarted.tick(at(10))),
            vec!["b1 no_show scheduler"]
        );
    }

    #[test]
    fn deadlines_cover_every_change() {
        let s = schedule(vec![booking("b1", 0, 60)]);
        assert_eq!(s.next_deadline(at(-30)), Some(at(-15)));
        assert_eq!(s.next_deadline(at(-15)), Some(at(0)));
        assert_eq!(s.next_deadline(at(0)), Some(at(10)));
        assert_eq!(s.next_deadline(at(10)), Some(at(60)));
        assert_eq!(s.next_deadline(at(60)), None);
    }
}
