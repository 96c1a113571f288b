//! The access machine: a credential presented at a panel or reader goes in; the lockout gate,
//! the decision and everything that follows it come out as [`Effect`]s — the doors to open, the
//! answer to the panel or reader, the audit record, the events for ZenCore and the lockout
//! guards to store.
//!
//! Pure: grants, devices and keys are state handed in; time and trust in the clock come from
//! the [`Ctx`] of each input. The devices hub routes credentials here and carries out the
//! effects (it knows the drivers that answer a panel and the actions that open a door).

use serde_json::Value;

use super::lockout::{self, Gate, Guard, Lockouts, Policy};
use super::{decide, places, Credential, Decision, Grant, Place, Presented};
use crate::audit::{Entry, Outcome};
use crate::config::Config;
use crate::event::{Ctx, Millis};
use crate::telemetry::{events as t, InternalEvent};
use crate::wire::panel::Told;
use crate::wire::{AccessDenied, AccessLockout, CredentialType};

/// Where the answer to a presented credential goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// A panel's `feedback` topic, with the panel's `request_id`.
    Panel(Value),
    /// A reader's LED and buzzer.
    Reader,
}

/// Everything that can happen to the access machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// A credential presented at `reader` (a panel or reader device id).
    Present {
        reader: String,
        credential: Credential,
        answer: Answer,
    },
    /// A card read at `reader` that is not a card of its format (a parity error): denied as
    /// `unknown_credential` without being compared, and not counted toward a lockout (a bad
    /// read is not a guess).
    Unreadable { reader: String, answer: Answer },
    /// Time passed: lockouts that ran out end.
    Tick,
}

/// What the caller must do, in this order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Store this lockout guard (with the rest of the input's effects).
    Guard(String, Guard),
    /// A record for the audit log.
    Audit(Entry),
    /// Answer the panel or reader: granted, or denied with what it may be told.
    Answer {
        reader: String,
        answer: Answer,
        told: Option<Told>,
    },
    /// Unlock these doors for the grant (local-credential actions).
    Open {
        doors: Vec<String>,
        grant_id: String,
        booking_id: String,
    },
    /// `access.denied` about `reader`.
    Denied { reader: String, data: AccessDenied },
    /// `access.lockout` about `reader`.
    LockedOut { reader: String, data: AccessLockout },
}

pub struct Machine {
    grants: Vec<Grant>,
    places: Vec<Place>,
    /// The inbound keys, which a grant's `pin_hmac` and `card_hmac` are made with.
    keys: Vec<crate::signing::Key>,
    policy: Policy,
    lockouts: Lockouts,
    /// Lockdowns in force: every credential presented in their scope is denied uncompared.
    lockdowns: Vec<crate::wire::Lockdown>,
}

impl Machine {
    pub fn new(config: &Config) -> Machine {
        let keys = config
            .inbound
            .verifying_secrets()
            .iter()
            .filter_map(|s| crate::signing::Key::from_secret(s.expose()).ok())
            .collect();
        let policy = Policy::from_config(&config.access);
        Machine {
            grants: Vec::new(),
            places: places(config),
            keys,
            policy,
            lockouts: Lockouts::new(policy, []),
            lockdowns: Vec::new(),
        }
    }

    /// The lockdowns in force (the whole set).
    pub fn set_lockdowns(&mut self, lockdowns: Vec<crate::wire::Lockdown>) {
        self.lockdowns = lockdowns;
    }

    /// The grants as stored (the whole set).
    pub fn set_grants(&mut self, grants: Vec<Grant>) {
        self.grants = grants;
    }

    /// The panels' and readers' lockout state as stored.
    pub fn set_lockouts(&mut self, guards: impl IntoIterator<Item = (String, Guard)>) {
        self.lockouts = Lockouts::new(self.policy, guards);
    }

    /// Until when `reader` is locked out, if it is.
    pub fn locked_until(&self, reader: &str) -> Option<Millis> {
        self.lockouts.locked_until(reader)
    }

    pub fn handle(&mut self, input: Input, ctx: &Ctx) -> Vec<Effect> {
        match input {
            Input::Present {
                reader,
                credential,
                answer,
            } => self.present(reader, credential, answer, ctx),
            Input::Unreadable { reader, answer } => denied_uncompared(
                reader,
                CredentialType::Card,
                crate::wire::DenyReason::UnknownCredential,
                answer,
                ctx,
            ),
            Input::Tick => {
                let ended = self.lockouts.tick(ctx.now);
                let mut out = Vec::new();
                lockout_effects(ended, ctx, &mut out);
                out
            }
        }
    }

    /// Decides a presented credential. A panel or reader that is locked out has nothing
    /// compared: the attempt is counted and refused.
    fn present(
        &mut self,
        reader: String,
        credential: Credential,
        answer: Answer,
        ctx: &Ctx,
    ) -> Vec<Effect> {
        let room = self
            .places
            .iter()
            .find(|p| p.id == reader)
            .map(|p| p.meeting_space_id.as_str());
        if let Some(l) = room.and_then(|r| self.lockdowns.iter().find(|l| l.covers(r))) {
            t::LockdownDenied {
                device: &reader,
                lockdown_id: &l.lockdown_id,
            }
            .emit();
            let reason = crate::wire::DenyReason::Lockdown;
            return denied_uncompared(reader, credential.kind(), reason, answer, ctx);
        }
        let now = ctx.now;
        let mut out = Vec::new();
        let mut gated = Vec::new();
        let gate = self.lockouts.gate(&reader, now, &mut gated);
        lockout_effects(gated, ctx, &mut out);
        if let Gate::LockedOut { .. } = gate {
            t::AccessDecision {
                device: &reader,
                granted: false,
                reason: Some("locked_out"),
                credential_type: credential.kind().as_str(),
            }
            .emit();
            out.push(Effect::Answer {
                reader,
                answer,
                told: Some(Told::LockedOut),
            });
            return out;
        }
        let presented = Presented::new(credential.clone(), &self.keys);
        let decision = decide(&self.grants, &presented, &reader, &self.places, now);
        let granted = matches!(decision, Decision::Granted { .. });
        let (result, reason, grant_id, booking_id, doors) = match &decision {
            Decision::Granted {
                grant_id,
                booking_id,
                doors,
            } => (
                Outcome::Granted,
                None,
                Some(grant_id.clone()),
                Some(booking_id.clone()),
                doors.clone(),
            ),
            Decision::Denied {
                reason,
                booking_id,
                grant_id,
            } => (
                Outcome::Denied,
                Some(reason.as_str()),
                grant_id.clone(),
                booking_id.clone(),
                Vec::new(),
            ),
        };
        out.push(Effect::Audit(Entry {
            at: now.rfc3339(),
            credential_type: credential.kind(),
            reader: reader.clone(),
            doors,
            grant_id,
            booking_id,
            result,
            reason: reason.map(String::from),
            clock_untrusted: !ctx.clock_trusted,
            attempts: None,
        }));
        t::AccessDecision {
            device: &reader,
            granted,
            reason,
            credential_type: credential.kind().as_str(),
        }
        .emit();
        let compared = self.lockouts.compared(&reader, granted, now);
        let began = compared
            .iter()
            .any(|e| matches!(e, lockout::Effect::Began { .. }));
        // The panel is told only granted or denied: the precise reason would tell a guesser
        // which PINs exist (DESIGN §2). It goes to ZenCore and the audit log.
        let told = match (granted, began) {
            (true, _) => None,
            (false, true) => Some(Told::LockedOut),
            (false, false) => Some(Told::Denied),
        };
        out.push(Effect::Answer {
            reader: reader.clone(),
            answer,
            told,
        });
        match decision {
            Decision::Granted {
                grant_id,
                booking_id,
                doors,
            } => out.push(Effect::Open {
                doors,
                grant_id,
                booking_id,
            }),
            Decision::Denied {
                reason, booking_id, ..
            } => out.push(Effect::Denied {
                reader,
                data: AccessDenied {
                    credential_type: credential.kind(),
                    reason,
                    booking_id,
                },
            }),
        }
        // After the denial's own event, so ZenCore reads them in the order they happened.
        lockout_effects(compared, ctx, &mut out);
        out
    }
}

/// A credential denied without being compared — presented under a lockdown (`lockdown`), or a
/// card read that could not be a card (`unknown_credential`): audited, answered `denied`,
/// reported. It counts toward no lockout: nothing was guessed.
fn denied_uncompared(
    reader: String,
    credential_type: CredentialType,
    reason: crate::wire::DenyReason,
    answer: Answer,
    ctx: &Ctx,
) -> Vec<Effect> {
    t::AccessDecision {
        device: &reader,
        granted: false,
        reason: Some(reason.as_str()),
        credential_type: credential_type.as_str(),
    }
    .emit();
    vec![
        Effect::Audit(Entry {
            at: ctx.now.rfc3339(),
            credential_type,
            reader: reader.clone(),
            doors: Vec::new(),
            grant_id: None,
            booking_id: None,
            result: Outcome::Denied,
            reason: Some(reason.as_str().to_owned()),
            clock_untrusted: !ctx.clock_trusted,
            attempts: None,
        }),
        Effect::Answer {
            reader: reader.clone(),
            answer,
            told: Some(Told::Denied),
        },
        Effect::Denied {
            reader,
            data: AccessDenied {
                credential_type,
                reason,
                booking_id: None,
            },
        },
    ]
}

/// What the lockout machine asked for: guards to store, an `access.lockout` when one begins,
/// one audit record with the attempts when one ends.
fn lockout_effects(effects: Vec<lockout::Effect>, ctx: &Ctx, out: &mut Vec<Effect>) {
    for e in effects {
        match e {
            lockout::Effect::Store(reader, guard) => out.push(Effect::Guard(reader, guard)),
            lockout::Effect::Began {
                reader,
                failures,
                until,
                lockouts,
            } => {
                t::LockoutBegan {
                    device: &reader,
                    failures,
                    until: &until.rfc3339(),
                    lockouts_in_a_row: lockouts,
                }
                .emit();
                out.push(Effect::LockedOut {
                    reader,
                    data: AccessLockout {
                        failures,
                        until,
                        lockouts,
                    },
                });
            }
            lockout::Effect::Ended {
                reader,
                since,
                until,
                attempts,
            } => {
                t::LockoutEnded {
                    device: &reader,
                    attempts,
                }
                .emit();
                out.push(Effect::Audit(Entry {
                    at: until.rfc3339(),
                    credential_type: CredentialType::Any,
                    reader,
                    doors: Vec::new(),
                    grant_id: None,
                    booking_id: None,
                    result: Outcome::LockedOut,
                    reason: Some(format!("locked out from {}", since.rfc3339())),
                    clock_untrusted: !ctx.clock_trusted,
                    attempts: Some(attempts),
                }));
            }
        }
    }
}

#[cfg(test)]
mod tests;
