//! Guessing is bounded (DESIGN §2). Per panel or reader: `lockout_after` denied credentials
//! within `lockout_window` lock it out for `lockout`, doubling with each further lockout in a
//! row up to `lockout_max`; a granted credential, or an hour without a denial, resets the
//! doubling. While locked out nothing presented there is compared.
//!
//! Pure: time is passed in and the caller stores the [`Guard`] records it is handed (they are
//! what makes a lockout survive a restart). Attempts during a lockout are counted in memory and
//! written once, when the lockout ends, so a flood of guesses costs no store writes.

use std::collections::HashMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::AccessConfig;
use crate::event::Millis;

/// An hour without a denial forgets the lockouts in a row.
pub const STREAK_RESET: Duration = Duration::from_secs(3600);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// 0: no lockout.
    pub after: u32,
    pub window: Duration,
    pub first: Duration,
    pub max: Duration,
}

impl Policy {
    pub fn from_config(c: &AccessConfig) -> Policy {
        Policy {
            after: c.lockout_after,
            window: c.lockout_window,
            first: c.lockout,
            max: c.lockout_max,
        }
    }

    /// The length of the lockout that follows `streak` lockouts in a row.
    fn length(&self, streak: u32) -> Duration {
        let factor = 1u32.checked_shl(streak.min(31)).unwrap_or(u32::MAX);
        self.first.saturating_mul(factor).min(self.max)
    }
}

/// What is kept per panel or reader.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Guard {
    /// When the compared denials of the current window happened (at most `after` of them).
    pub denials: Vec<Millis>,
    /// Lockouts in a row, for the doubling.
    pub streak: u32,
    pub last_denial: Option<Millis>,
    /// The current lockout: since, until.
    pub locked: Option<(Millis, Millis)>,
    /// Attempts made during the current lockout (stored when it ends).
    #[serde(default)]
    pub attempts: u64,
}

impl crate::record::Record for Guard {
    const FAMILY: &'static str = "access.lockout";
    const VERSION: u32 = 1;
}

/// What the caller must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Store this guard for this reader (with the decision that changed it).
    Store(String, Guard),
    /// A lockout began: send one `access.lockout`.
    Began {
        reader: String,
        failures: u32,
        until: Millis,
        lockouts: u32,
    },
    /// A lockout ran out: one audit record with the attempts made during it.
    Ended {
        reader: String,
        since: Millis,
        until: Millis,
        attempts: u64,
    },
}

/// Whether a presented credential may be compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    Compare,
    LockedOut { until: Millis },
}

#[derive(Debug, Default)]
pub struct Lockouts {
    policy: Option<Policy>,
    guards: HashMap<String, Guard>,
}

impl Lockouts {
    pub fn new(policy: Policy, guards: impl IntoIterator<Item = (String, Guard)>) -> Lockouts {
        Lockouts {
            policy: (policy.after > 0).then_some(policy),
            guards: guards.into_iter().collect(),
        }
    }

    /// Before a credential at `reader` is compared. A lockout that has run out ends here (if
    /// `tick` has not ended it yet); an attempt during one is counted.
    pub fn gate(&mut self, reader: &str, now: Millis, effects: &mut Vec<Effect>) -> Gate {
        if self.policy.is_none() {
            return Gate::Compare;
        }
        self.end_if_over(reader, now, effects);
        let Some(guard) = self.guards.get_mut(reader) else {
            return Gate::Compare;
        };
        match guard.locked {
            Some((_, until)) => {
                guard.attempts = guard.attempts.saturating_add(1);
                Gate::LockedOut { until }
            }
            None => Gate::Compare,
        }
    }

    /// After a credential at `reader` was compared: `granted` or denied.
    pub fn compared(&mut self, reader: &str, granted: bool, now: Millis) -> Vec<Effect> {
        let Some(policy) = self.policy else {
            return Vec::new();
        };
        let guard = self.guards.entry(reader.to_string()).or_default();
        if granted {
            if *guard == Guard::default() {
                return Vec::new();
            }
            *guard = Guard::default();
            return vec![Effect::Store(reader.into(), guard.clone())];
        }
        if guard
            .last_denial
            .is_some_and(|t| now.saturating_sub(t) >= STREAK_RESET)
        {
            guard.streak = 0;
        }
        guard.last_denial = Some(now);
        guard
            .denials
            .retain(|t| *t <= now && now.saturating_sub(*t) < policy.window);
        guard.denials.push(now);
        let mut effects = Vec::new();
        if guard.denials.len() >= policy.after as usize {
            let until = now.saturating_add(policy.length(guard.streak));
            let failures = guard.denials.len() as u32;
            guard.streak = guard.streak.saturating_add(1);
            guard.denials.clear();
            guard.locked = Some((now, until));
            guard.attempts = 0;
            effects.push(Effect::Began {
                reader: reader.into(),
                failures,
                until,
                lockouts: guard.streak,
            });
        }
        effects.insert(0, Effect::Store(reader.into(), guard.clone()));
        effects
    }

    /// Ends the lockouts that have run out.
    pub fn tick(&mut self, now: Millis) -> Vec<Effect> {
        let mut effects = Vec::new();
        let over: Vec<String> = self
            .guards
            .iter()
            .filter(|(_, g)| g.locked.is_some_and(|(_, until)| now >= until))
            .map(|(r, _)| r.clone())
            .collect();
        for reader in over {
            self.end_if_over(&reader, now, &mut effects);
        }
        effects
    }

    fn end_if_over(&mut self, reader: &str, now: Millis, effects: &mut Vec<Effect>) {
        let Some(guard) = self.guards.get_mut(reader) else {
            return;
        };
        let Some((since, until)) = guard.locked else {
            return;
        };
        if now < until {
            return;
        }
        effects.push(Effect::Ended {
            reader: reader.into(),
            since,
            until,
            attempts: guard.attempts,
        });
        guard.locked = None;
        guard.attempts = 0;
        effects.push(Effect::Store(reader.into(), guard.clone()));
    }

    /// Until when `reader` is locked out, if it is.
    pub fn locked_until(&self, reader: &str) -> Option<Millis> {
        self.guards
            .get(reader)
            .and_then(|g| g.locked)
            .map(|(_, until)| until)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1000;

    fn policy() -> Policy {
        Policy {
            after: 5,
            window: Duration::from_secs(60),
            first: Duration::from_secs(60),
            max: Duration::from_secs(15 * 60),
        }
    }

    fn deny_n(l: &mut Lockouts, reader: &str, n: usize, from: u64) -> Vec<Effect> {
        let mut all = Vec::new();
        for i in 0..n {
            let now = Millis(from + i as u64 * S);
            let mut fx = Vec::new();
            assert_eq!(l.gate(reader, now, &mut fx), Gate::Compare, "denial {i}");
            all.extend(fx);
            all.extend(l.compared(reader, false, now));
        }
        all
    }

    fn began(fx: &[Effect]) -> Vec<(u32, Millis, u32)> {
        fx.iter()
            .filter_map(|e| match e {
                Effect::Began {
                    failures,
                    until,
                    lockouts,
                    ..
                } => Some((*failures, *until, *lockouts)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn five_denials_in_a_minute_lock_out_for_a_minute_and_attempts_are_counted_not_compared() {
        let mut l = Lockouts::new(policy(), []);
        let t0 = 1_000_000;
        let fx = deny_n(&mut l, "panel", 4, t0);
        assert!(began(&fx).is_empty());
        let fx = deny_n(&mut l, "panel", 1, t0 + 4 * S);
        assert_eq!(began(&fx), vec![(5, Millis(t0 + 64 * S), 1)]);
        // A stored guard goes with the denial that locked it.
        assert!(matches!(&fx[0], Effect::Store(r, g) if r == "panel" && g.locked.is_some()));
        // Every attempt during it is refused uncompared and counted; nothing to store.
        for i in 0..1000 {
            let mut fx = Vec::new();
            let gate = l.gate("panel", Millis(t0 + 5 * S + i), &mut fx);
            assert_eq!(
                gate,
                Gate::LockedOut {
                    until: Millis(t0 + 64 * S)
                }
            );
            assert!(fx.is_empty());
        }
        // Another reader is not affected.
        let mut fx = Vec::new();
        assert_eq!(l.gate("reader", Millis(t0 + 6 * S), &mut fx), Gate::Compare);
        // The lockout ends on a tick, with one record of the attempts.
        assert!(l.tick(Millis(t0 + 64 * S - 1)).is_empty());
        let fx = l.tick(Millis(t0 + 64 * S));
        assert!(fx.contains(&Effect::Ended {
            reader: "panel".into(),
            since: Millis(t0 + 4 * S),
            until: Millis(t0 + 64 * S),
            attempts: 1000,
        }));
        let mut fx = Vec::new();
        assert_eq!(l.gate("panel", Millis(t0 + 65 * S), &mut fx), Gate::Compare);
    }

    #[test]
    fn denials_spread_wider_than_the_window_never_lock_out() {
        let mut l = Lockouts::new(policy(), []);
        let mut fx = Vec::new();
        for i in 0..100u64 {
            fx.extend(l.compared("panel", false, Millis(1_000_000 + i * 16 * S)));
        }
        assert!(began(&fx).is_empty());
    }

    #[test]
    fn lockouts_in_a_row_double_up_to_the_max_and_a_grant_or_an_hour_resets_them() {
        let mut l = Lockouts::new(policy(), []);
        let mut t = 1_000_000u64;
        let mut lengths = Vec::new();
        for _ in 0..6 {
            let fx = deny_n(&mut l, "p", 5, t);
            let (_, until, _) = began(&fx)[0];
            let start = t + 4 * S;
            lengths.push((until.0 - start) / S);
            t = until.0;
            l.tick(Millis(t));
        }
        assert_eq!(lengths, vec![60, 120, 240, 480, 900, 900]);
        // A grant resets the doubling.
        assert!(
            matches!(&l.compared("p", true, Millis(t))[..], [Effect::Store(_, g)] if *g == Guard::default())
        );
        let fx = deny_n(&mut l, "p", 5, t + S);
        assert_eq!((began(&fx)[0].1 .0 - (t + 5 * S)) / S, 60);
        // So does an hour without a denial.
        let t = began(&fx)[0].1 .0;
        l.tick(Millis(t));
        let fx = deny_n(&mut l, "p", 5, t + 10 * S);
        assert_eq!(began(&fx)[0].2, 2, "second in a row");
        let t = began(&fx)[0].1 .0;
        l.tick(Millis(t));
        let later = t + 3600 * S;
        let fx = deny_n(&mut l, "p", 5, later);
        assert_eq!(began(&fx)[0].2, 1, "the streak was forgotten");
        assert_eq!((began(&fx)[0].1 .0 - (later + 4 * S)) / S, 60);
    }

    #[test]
    fn a_lockout_survives_a_restart_from_its_stored_guard() {
        let mut l = Lockouts::new(policy(), []);
        let fx = deny_n(&mut l, "p", 5, 1_000_000);
        let stored: Vec<(String, Guard)> = fx
            .into_iter()
            .filter_map(|e| match e {
                Effect::Store(r, g) => Some((r, g)),
                _ => None,
            })
            .collect();
        let last = stored.last().cloned().unwrap();
        let mut again = Lockouts::new(policy(), [last]);
        let mut fx = Vec::new();
        assert!(matches!(
            again.gate("p", Millis(1_010_000), &mut fx),
            Gate::LockedOut { .. }
        ));
    }

    #[test]
    fn disabled_never_locks_and_stores_nothing() {
        let mut l = Lockouts::new(
            Policy {
                after: 0,
                ..policy()
            },
            [],
        );
        let fx = deny_n(&mut l, "p", 100, 1_000_000);
        assert!(fx.is_empty());
    }

    #[test]
    fn a_clock_that_jumps_back_does_not_unlock_or_crash() {
        let mut l = Lockouts::new(policy(), []);
        deny_n(&mut l, "p", 5, 10_000_000);
        let mut fx = Vec::new();
        assert!(matches!(
            l.gate("p", Millis(0), &mut fx),
            Gate::LockedOut { .. }
        ));
        // Denials from the future are dropped from the window rather than kept forever.
        let mut l = Lockouts::new(policy(), []);
        l.compared("q", false, Millis(u64::MAX / 2));
        for i in 0..4 {
            let fx = l.compared("q", false, Millis(1_000_000 + i));
            assert!(began(&fx).is_empty());
        }
    }
}
