//! The delivery scheduler: which event to send next, and what a response means. No I/O, no
//! clock, no randomness of its own: time and jitter are passed in, so every rule of DESIGN
//! section 1 is tested with plain tables.
//!
//! Rules it enforces:
//! - Per-device order: only the oldest pending event of a device (its lane head) may be in
//!   flight or sent; later events of that device wait until it is delivered or dead.
//! - Concurrency: at most `concurrency` requests in flight while ZenCore is reachable.
//! - Unreachable ZenCore (connection error, timeout, 429, 502, 503, 504): the endpoint as a
//!   whole backs off and sends one probe at a time, the oldest pending event; the first
//!   response that is not "unreachable" makes it healthy again and the backlog drains.
//! - Other failures back off only that event (and, through its lane, its device).
//! - Backoff: retry n waits uniform in [0, min(max_backoff, initial_backoff * 2^n)];
//!   `Retry-After` (at most 1 h) is a floor on that delay, even above the cap.
//! - 410 Gone and events older than `max_age` go to the dead letters.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use crate::event::Millis;
use crate::event::PendingEvent;

/// `Retry-After` is honoured up to this.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub concurrency: usize,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    pub max_age: Duration,
}

impl Policy {
    pub fn from_config(d: &crate::config::DeliveryConfig) -> Policy {
        Policy {
            concurrency: d.concurrency,
            initial_backoff: d.initial_backoff,
            max_backoff: d.max_backoff,
            max_age: d.max_age,
        }
    }

    /// The delay before retry `n` (n ≥ 1), given `unit` uniform in [0, 1).
    pub fn backoff(&self, n: u32, unit: f64) -> Duration {
        let ceiling = self
            .initial_backoff
            .checked_mul(1u32.checked_shl(n.min(31)).unwrap_or(u32::MAX))
            .unwrap_or(self.max_backoff)
            .min(self.max_backoff);
        ceiling.mul_f64(unit.clamp(0.0, 1.0))
    }
}

/// What one attempt's result means for delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// 2xx within the timeout.
    Delivered,
    /// 410: ZenCore will never take this event.
    Gone,
    /// Connection error, timeout, 429, 502, 503, 504.
    Unreachable { retry_after: Option<Duration> },
    /// Any other status: this event failed, ZenCore itself is there.
    Failed { retry_after: Option<Duration> },
}

/// Maps an HTTP status (`None` for no response: connection error or timeout) and a parsed
/// `Retry-After` to an outcome. `Retry-After` counts only on 429 and 503, as DESIGN says.
pub fn classify(status: Option<u16>, retry_after: Option<Duration>) -> Outcome {
    let retry_after = retry_after.map(|d| d.min(MAX_RETRY_AFTER));
    match status {
        None => Outcome::Unreachable { retry_after: None },
        Some(s) if (200..300).contains(&s) => Outcome::Delivered,
        Some(410) => Outcome::Gone,
        Some(429 | 503) => Outcome::Unreachable { retry_after },
        Some(502 | 504) => Outcome::Unreachable { retry_after: None },
        Some(_) => Outcome::Failed { retry_after: None },
    }
}

/// What the I/O shell must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// POST this event; `attempt` is the `X-Webhook-Attempt` number.
    Send { seq: u64, attempt: u32 },
    /// Move this event to the dead letters: older than `max_age`.
    Expire { seq: u64 },
}

/// How a finished attempt changed the event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Delivered,
    Dead {
        reason: &'static str,
    },
    Retry {
        at: Millis,
    },
    /// Left to the endpoint's backoff (ZenCore unreachable).
    Waiting,
}

#[derive(Debug, Clone)]
struct Entry {
    /// Shared with `lanes`' key: a backlog of one device holds its name once.
    lane: Option<Arc<str>>,
    at: Millis,
    attempts: u32,
    /// Earliest time of the next attempt; `Millis(0)` when it may go now.
    next_at: Millis,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    Healthy,
    Unreachable { failures: u32, next_probe: Millis },
}

#[derive(Debug)]
pub struct Scheduler {
    policy: Policy,
    entries: HashMap<u64, Entry>,
    /// Pending sequences per device, oldest first. Only the first may be a candidate.
    lanes: HashMap<Arc<str>, BTreeSet<u64>>,
    /// Events that may be sent when their time comes: lane heads and lane-less events that
    /// are not in flight, by (next_at, seq) and by seq.
    by_time: BTreeSet<(Millis, u64)>,
    by_seq: BTreeSet<u64>,
    in_flight: HashSet<u64>,
    probe: Option<u64>,
    endpoint: Endpoint,
}

impl Scheduler {
    pub fn new(policy: Policy) -> Scheduler {
        Scheduler {
            policy,
            entries: HashMap::new(),
            lanes: HashMap::new(),
            by_time: BTreeSet::new(),
            by_seq: BTreeSet::new(),
            in_flight: HashSet::new(),
            probe: None,
            endpoint: Endpoint::Healthy,
        }
    }

    pub fn set_policy(&mut self, policy: Policy) {
        self.policy = policy;
    }

    pub fn pending(&self) -> usize {
        self.entries.len()
    }

    /// Events of `lane` held by the scheduler.
    pub fn lane_len(&self, lane: &str) -> usize {
        self.lanes.get(lane).map_or(0, |q| q.len())
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    pub fn is_reachable(&self) -> bool {
        self.endpoint == Endpoint::Healthy
    }

    /// Adds a pending event; adding one that is already known does nothing.
    pub fn add(&mut self, p: PendingEvent) {
        if self.entries.contains_key(&p.seq) {
            return;
        }
        let lane: Option<Arc<str>> = p.lane.as_deref().map(|name| {
            self.lanes
                .get_key_value(name)
                .map(|(k, _)| k.clone())
                .unwrap_or_else(|| Arc::from(name))
        });
        let entry = Entry {
            lane: lane.clone(),
            at: p.at,
            attempts: p.attempts,
            next_at: p.next_attempt.unwrap_or_default(),
        };
        self.entries.insert(p.seq, entry);
        match lane {
            Some(lane) => {
                let queue = self.lanes.entry(lane).or_default();
                let old_head = queue.first().copied();
                queue.insert(p.seq);
                if old_head.is_none_or(|h| p.seq < h) {
                    // A new head (first event, or a re-queued older one): it replaces the old
                    // head as candidate, unless the old head is already in flight.
                    if let Some(h) = old_head {
                        if self.in_flight.contains(&h) {
                            return;
                        }
                        self.uncandidate(h);
                    }
                    self.candidate(p.seq);
                }
            }
            None => self.candidate(p.seq),
        }
    }

    fn candidate(&mut self, seq: u64) {
        if let Some(e) = self.entries.get(&seq) {
            self.by_time.insert((e.next_at, seq));
            self.by_seq.insert(seq);
        }
    }

    /// Makes `seq` sendable again after an attempt: itself if it leads its lane, else the
    /// older event that was re-queued into the lane while it was in flight.
    fn make_ready(&mut self, seq: u64) {
        let lane = match self.entries.get(&seq) {
            Some(e) => e.lane.clone(),
            None => return,
        };
        let head = lane
            .and_then(|l| self.lanes.get(&*l))
            .and_then(|q| q.first().copied())
            .unwrap_or(seq);
        if !self.in_flight.contains(&head) && !self.by_seq.contains(&head) {
            self.candidate(head);
        }
    }

    fn uncandidate(&mut self, seq: u64) {
        if let Some(e) = self.entries.get(&seq) {
            self.by_time.remove(&(e.next_at, seq));
            self.by_seq.remove(&seq);
        }
    }

    /// Forgets an event (delivered, dead, or gone from the store) and promotes its lane's
    /// next event.
    pub fn remove(&mut self, seq: u64) {
        self.uncandidate(seq);
        self.in_flight.remove(&seq);
        if self.probe == Some(seq) {
            self.probe = None;
        }
        let Some(entry) = self.entries.remove(&seq) else {
            return;
        };
        if let Some(lane) = entry.lane {
            if let Some(queue) = self.lanes.get_mut(&*lane) {
                queue.remove(&seq);
                // Whatever leads the lane now must be sendable (the removed event may have
                // been its head, or an in-flight event a re-queued older one waited behind).
                let next = queue.first().copied();
                if queue.is_empty() {
                    self.lanes.remove(&*lane);
                }
                if let Some(next) = next {
                    if !self.in_flight.contains(&next) && !self.by_seq.contains(&next) {
                        self.candidate(next);
                    }
                }
            }
        }
    }

    /// What to do now: events to send (within concurrency, or one probe while ZenCore is
    /// unreachable) and events to expire.
    pub fn poll(&mut self, now: Millis) -> Vec<Action> {
        let mut actions = Vec::new();
        loop {
            let pick = match self.endpoint {
                Endpoint::Healthy => {
                    if self.in_flight.len() >= self.policy.concurrency {
                        break;
                    }
                    match self.by_time.first() {
                        Some(&(at, seq)) if at <= now => seq,
                        _ => break,
                    }
                }
                Endpoint::Unreachable { next_probe, .. } => {
                    if self.probe.is_some() || !self.in_flight.is_empty() || now < next_probe {
                        break;
                    }
                    match self.by_seq.first() {
                        Some(&seq) => seq,
                        None => break,
                    }
                }
            };
            let Some(entry) = self.entries.get(&pick) else {
                // Cannot happen: candidates always have entries. Drop the stray candidate
                // rather than loop on it.
                self.by_seq.remove(&pick);
                self.by_time.retain(|&(_, s)| s != pick);
                continue;
            };
            if now.saturating_sub(entry.at) > self.policy.max_age {
                actions.push(Action::Expire { seq: pick });
                self.remove(pick);
                continue;
            }
            let attempt = entry.attempts + 1;
            self.uncandidate(pick);
            self.in_flight.insert(pick);
            if !self.is_reachable() {
                self.probe = Some(pick);
            }
            actions.push(Action::Send { seq: pick, attempt });
        }
        actions
    }

    /// Feeds back the result of an attempt. `unit` is a uniform random number in [0, 1) for
    /// the jitter.
    pub fn complete(&mut self, seq: u64, outcome: Outcome, now: Millis, unit: f64) -> Decision {
        let was_probe = self.probe == Some(seq);
        self.in_flight.remove(&seq);
        if was_probe {
            self.probe = None;
        }
        if let Some(e) = self.entries.get_mut(&seq) {
            e.attempts += 1;
        }
        match outcome {
            Outcome::Delivered => {
                self.endpoint = Endpoint::Healthy;
                self.remove(seq);
                Decision::Delivered
            }
            Outcome::Gone => {
                self.endpoint = Endpoint::Healthy;
                self.remove(seq);
                Decision::Dead { reason: "gone" }
            }
            Outcome::Unreachable { retry_after } => {
                let failures = match self.endpoint {
                    Endpoint::Healthy => Some(1),
                    // Only the probe's failure deepens the backoff: requests that were already
                    // in flight when ZenCore went away say nothing new.
                    Endpoint::Unreachable { failures, .. } if was_probe => Some(failures + 1),
                    Endpoint::Unreachable { .. } => None,
                };
                if let Some(failures) = failures {
                    let delay = self
                        .policy
                        .backoff(failures, unit)
                        .max(retry_after.unwrap_or_default());
                    self.endpoint = Endpoint::Unreachable {
                        failures,
                        next_probe: now.saturating_add(delay),
                    };
                }
                // The event that was told to wait waits, even if another request in flight
                // finds ZenCore healthy again a moment later.
                if let (Some(ra), Some(e)) = (retry_after, self.entries.get_mut(&seq)) {
                    e.next_at = e.next_at.max(now.saturating_add(ra));
                }
                self.make_ready(seq);
                Decision::Waiting
            }
            Outcome::Failed { retry_after } => {
                self.endpoint = Endpoint::Healthy;
                let Some(e) = self.entries.get_mut(&seq) else {
                    return Decision::Waiting;
                };
                let delay = self
                    .policy
                    .backoff(e.attempts, unit)
                    .max(retry_after.unwrap_or_default());
                e.next_at = now.saturating_add(delay);
                let at = e.next_at;
                self.make_ready(seq);
                Decision::Retry { at }
            }
        }
    }

    /// When [`Scheduler::poll`] may next have something to do, if nothing else happens.
    pub fn next_wakeup(&self) -> Option<Millis> {
        match self.endpoint {
            Endpoint::Healthy => {
                if self.in_flight.len() >= self.policy.concurrency {
                    return None;
                }
                self.by_time.first().map(|&(at, _)| at)
            }
            Endpoint::Unreachable { next_probe, .. } => {
                if self.probe.is_some() || self.by_seq.is_empty() {
                    None
                } else {
                    Some(next_probe)
                }
            }
        }
    }

    /// When the endpoint will next be probed, while ZenCore is unreachable.
    pub fn next_probe(&self) -> Option<Millis> {
        match self.endpoint {
            Endpoint::Healthy => None,
            Endpoint::Unreachable { next_probe, .. } => Some(next_probe),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy {
            concurrency: 2,
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(300),
            max_age: Duration::from_secs(7 * 86400),
        }
    }

    fn pending(seq: u64, lane: Option<&str>) -> PendingEvent {
        PendingEvent {
            seq,
            lane: lane.map(String::from),
            kind: None,
            at: Millis(1_000_000),
            attempts: 0,
            next_attempt: None,
        }
    }

    fn sends(actions: &[Action]) -> Vec<u64> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Send { seq, .. } => Some(*seq),
                _ => None,
            })
            .collect()
    }

    const NOW: Millis = Millis(1_000_000);

    #[test]
    fn classification_table() {
        let ra = Some(Duration::from_secs(7));
        let cases = [
            (Some(200), None, Outcome::Delivered),
            (Some(204), None, Outcome::Delivered),
            (Some(410), None, Outcome::Gone),
            (None, None, Outcome::Unreachable { retry_after: None }),
            (Some(429), ra, Outcome::Unreachable { retry_after: ra }),
            (Some(503), ra, Outcome::Unreachable { retry_after: ra }),
            (Some(502), ra, Outcome::Unreachable { retry_after: None }),
            (Some(504), None, Outcome::Unreachable { retry_after: None }),
            (Some(500), ra, Outcome::Failed { retry_after: None }),
            (Some(400), None, Outcome::Failed { retry_after: None }),
            (Some(301), None, Outcome::Failed { retry_after: None }),
            (
                Some(429),
                Some(Duration::from_secs(99_999)),
                Outcome::Unreachable {
                    retry_after: Some(MAX_RETRY_AFTER),
                },
            ),
        ];
        for (status, ra, want) in cases {
            assert_eq!(classify(status, ra), want, "{status:?}");
        }
    }

    #[test]
    fn backoff_is_full_jitter_and_stays_spread_at_the_cap() {
        let p = policy();
        assert_eq!(p.backoff(1, 1.0), Duration::from_secs(2));
        assert_eq!(p.backoff(3, 1.0), Duration::from_secs(8));
        assert_eq!(p.backoff(3, 0.0), Duration::ZERO);
        assert_eq!(p.backoff(3, 0.5), Duration::from_secs(4));
        // At the cap the delay is still spread over [0, cap], not pinned to it.
        assert_eq!(p.backoff(40, 1.0), Duration::from_secs(300));
        assert_eq!(p.backoff(40, 0.25), Duration::from_secs(75));
        assert_eq!(p.backoff(u32::MAX, 0.1), Duration::from_secs(30));
    }

    #[test]
    fn one_device_is_strictly_ordered_while_devices_interleave() {
        let mut s = Scheduler::new(Policy {
            concurrency: 10,
            ..policy()
        });
        for (seq, lane) in [(1, "a"), (2, "a"), (3, "b"), (4, "a"), (5, "b")] {
            s.add(pending(seq, Some(lane)));
        }
        s.add(pending(6, None));
        s.add(pending(7, None));
        assert_eq!(sends(&s.poll(NOW)), vec![1, 3, 6, 7]);
        assert!(s.poll(NOW).is_empty(), "2 waits for 1, 5 waits for 3");
        assert_eq!(
            s.complete(3, Outcome::Delivered, NOW, 0.5),
            Decision::Delivered
        );
        assert_eq!(sends(&s.poll(NOW)), vec![5]);
        s.complete(1, Outcome::Delivered, NOW, 0.5);
        assert_eq!(sends(&s.poll(NOW)), vec![2]);
        s.complete(2, Outcome::Delivered, NOW, 0.5);
        assert_eq!(sends(&s.poll(NOW)), vec![4]);
    }

    #[test]
    fn concurrency_is_a_cap() {
        let mut s = Scheduler::new(policy());
        for seq in 1..=5 {
            s.add(pending(seq, None));
        }
        assert_eq!(sends(&s.poll(NOW)), vec![1, 2]);
        assert!(s.poll(NOW).is_empty());
        s.complete(1, Outcome::Delivered, NOW, 0.0);
        assert_eq!(sends(&s.poll(NOW)), vec![3]);
    }

    #[test]
    fn a_failed_event_backs_off_alone_and_holds_its_lane() {
        let mut s = Scheduler::new(Policy {
            concurrency: 10,
            ..policy()
        });
        s.add(pending(1, Some("a")));
        s.add(pending(2, Some("a")));
        s.add(pending(3, Some("b")));
        assert_eq!(sends(&s.poll(NOW)), vec![1, 3]);
        let d = s.complete(1, Outcome::Failed { retry_after: None }, NOW, 1.0);
        assert_eq!(
            d,
            Decision::Retry {
                at: NOW.saturating_add(Duration::from_secs(2))
            }
        );
        s.complete(3, Outcome::Delivered, NOW, 0.0);
        assert!(s.poll(NOW).is_empty(), "2 must not overtake 1");
        assert_eq!(
            s.next_wakeup(),
            Some(NOW.saturating_add(Duration::from_secs(2)))
        );
        let later = NOW.saturating_add(Duration::from_secs(2));
        assert_eq!(s.poll(later), vec![Action::Send { seq: 1, attempt: 2 }]);
    }

    #[test]
    fn retry_after_holds_its_event_even_when_another_request_succeeds() {
        let mut s = Scheduler::new(policy());
        s.add(pending(1, Some("a")));
        s.add(pending(2, Some("b")));
        assert_eq!(sends(&s.poll(NOW)), vec![1, 2]);
        let ra = Some(Duration::from_secs(2));
        s.complete(1, Outcome::Unreachable { retry_after: ra }, NOW, 0.0);
        // The other request was already on the wire and succeeds: ZenCore is healthy again.
        s.complete(2, Outcome::Delivered, NOW, 0.0);
        assert!(s.is_reachable());
        assert!(s
            .poll(NOW.saturating_add(Duration::from_millis(1_999)))
            .is_empty());
        assert_eq!(
            sends(&s.poll(NOW.saturating_add(Duration::from_secs(2)))),
            vec![1]
        );
    }

    #[test]
    fn unreachable_endpoint_probes_with_the_oldest_event_then_drains() {
        let mut s = Scheduler::new(policy());
        for seq in 1..=6 {
            s.add(pending(seq, Some(if seq % 2 == 0 { "a" } else { "b" })));
        }
        assert_eq!(sends(&s.poll(NOW)), vec![1, 2]);
        // Both fail as unreachable: one endpoint backoff, not two.
        let ra = Some(Duration::from_secs(30));
        s.complete(1, Outcome::Unreachable { retry_after: ra }, NOW, 0.0);
        s.complete(2, Outcome::Unreachable { retry_after: None }, NOW, 1.0);
        assert!(!s.is_reachable());
        let probe_at = NOW.saturating_add(Duration::from_secs(30));
        assert_eq!(s.next_wakeup(), Some(probe_at), "Retry-After is the floor");
        assert!(s
            .poll(NOW.saturating_add(Duration::from_secs(29)))
            .is_empty());
        // One probe, the oldest event, and nothing else while it is out.
        assert_eq!(s.poll(probe_at), vec![Action::Send { seq: 1, attempt: 2 }]);
        assert!(s.poll(probe_at).is_empty());
        s.complete(1, Outcome::Unreachable { retry_after: None }, probe_at, 1.0);
        // Second failure of the endpoint: ceiling 4 s.
        let next = probe_at.saturating_add(Duration::from_secs(4));
        assert_eq!(s.next_wakeup(), Some(next));
        assert_eq!(sends(&s.poll(next)), vec![1]);
        s.complete(1, Outcome::Delivered, next, 0.0);
        assert!(s.is_reachable());
        assert_eq!(
            sends(&s.poll(next)),
            vec![2, 3],
            "drains at full concurrency"
        );
    }

    #[test]
    fn gone_dead_letters_at_once_and_frees_the_lane() {
        let mut s = Scheduler::new(policy());
        s.add(pending(1, Some("a")));
        s.add(pending(2, Some("a")));
        s.poll(NOW);
        assert_eq!(
            s.complete(1, Outcome::Gone, NOW, 0.0),
            Decision::Dead { reason: "gone" }
        );
        assert_eq!(sends(&s.poll(NOW)), vec![2]);
    }

    #[test]
    fn old_events_expire_instead_of_being_sent() {
        let mut s = Scheduler::new(policy());
        s.add(pending(1, Some("a")));
        s.add(pending(2, Some("a")));
        let late = NOW.saturating_add(Duration::from_secs(8 * 86400));
        assert_eq!(
            s.poll(late),
            vec![Action::Expire { seq: 1 }, Action::Expire { seq: 2 }]
        );
        assert_eq!(s.pending(), 0);
    }

    #[test]
    fn a_requeued_older_event_goes_before_its_lane() {
        let mut s = Scheduler::new(policy());
        s.add(pending(5, Some("a")));
        s.add(pending(6, Some("a")));
        s.add(pending(2, Some("a")));
        assert_eq!(sends(&s.poll(NOW)), vec![2]);
        s.add(pending(2, Some("a")));
        assert_eq!(s.pending(), 3, "adding twice is a no-op");
    }

    #[test]
    fn a_requeue_behind_an_in_flight_head_is_sent_after_it() {
        let mut s = Scheduler::new(policy());
        s.add(pending(5, Some("a")));
        assert_eq!(sends(&s.poll(NOW)), vec![5]);
        s.add(pending(2, Some("a")));
        assert!(s.poll(NOW).is_empty(), "5 is in flight");
        s.complete(5, Outcome::Failed { retry_after: None }, NOW, 0.0);
        assert_eq!(sends(&s.poll(NOW)), vec![2]);
        s.complete(2, Outcome::Delivered, NOW, 0.0);
        assert_eq!(sends(&s.poll(NOW)), vec![5]);
    }

    #[test]
    fn attempts_continue_from_the_stored_count() {
        let mut s = Scheduler::new(policy());
        s.add(PendingEvent {
            attempts: 4,
            ..pending(1, None)
        });
        assert_eq!(s.poll(NOW), vec![Action::Send { seq: 1, attempt: 5 }]);
    }

    #[test]
    fn removing_an_in_flight_lane_head_promotes_the_next() {
        let mut s = Scheduler::new(policy());
        s.add(pending(1, Some("a")));
        s.add(pending(2, Some("a")));
        s.poll(NOW);
        s.remove(1);
        assert_eq!(sends(&s.poll(NOW)), vec![2]);
    }
}
