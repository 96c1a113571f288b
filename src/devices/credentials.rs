//! The hub's access path: a credential presented at a panel or reader, the lockout gate, the
//! decision, the doors it opens, the panel's feedback and the audit record.

use super::*;
use crate::telemetry::{events as t, InternalEvent};
use crate::wire::{AccessDenied, AccessLockout};

impl Hub {
    /// A credential presented at panel `reader` (its JSON message).
    pub(super) fn credential(&mut self, reader: &str, v: &Value, now: Millis) -> Effects {
        use crate::access::Credential;
        let request_id = v.get("request_id").cloned().unwrap_or(Value::Null);
        let credential = match (v.get("type").and_then(Value::as_str), v) {
            (Some("magic_link"), v) => v
                .get("token")
                .and_then(Value::as_str)
                .map(|t| Credential::MagicLink(t.into())),
            (Some("pin"), v) => v
                .get("pin")
                .and_then(Value::as_str)
                .map(|p| Credential::Pin(p.into())),
            _ => None,
        };
        let Some(credential) = credential else {
            self.counters.malformed.fetch_add(1, Ordering::Relaxed);
            t::CredentialMalformed { device: reader }.emit();
            return Effects::default();
        };
        self.present(reader, credential, Answer::Panel(request_id), now)
    }

    /// Decides a presented credential, unlocks the grant's doors or denies, answers the panel
    /// or reader, and records the decision. A panel or reader that is locked out has nothing
    /// compared: the attempt is counted and refused.
    pub(super) fn present(
        &mut self,
        reader: &str,
        credential: crate::access::Credential,
        answer: Answer,
        now: Millis,
    ) -> Effects {
        use crate::access::lockout::Gate;
        use crate::access::{decide, Decision};
        let mut out = Effects::default();
        let mut effects = Vec::new();
        let gate = self.lockouts.gate(reader, now, &mut effects);
        out.merge(self.lockout_effects(effects, now));
        if let Gate::LockedOut { .. } = gate {
            t::AccessDecision {
                device: reader,
                granted: false,
                reason: Some("locked_out"),
                credential_type: credential.kind(),
            }
            .emit();
            out.merge(self.feedback(reader, answer, false, Some("locked_out")));
            return out;
        }
        let presented = crate::access::Presented::new(credential.clone(), &self.pin_keys);
        let decision = decide(&self.grants, &presented, reader, &self.places, now);
        let (result, reason, grant_id, booking_id, doors) = match &decision {
            Decision::Granted {
                grant_id,
                booking_id,
                doors,
            } => (
                "granted",
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
                "denied",
                Some(reason.as_str()),
                grant_id.clone(),
                booking_id.clone(),
                Vec::new(),
            ),
        };
        out.push(Effect::Audit(crate::audit::Entry {
            at: now.rfc3339(),
            credential_type: credential.kind().into(),
            reader: reader.into(),
            doors: doors.clone(),
            grant_id: grant_id.clone(),
            booking_id: booking_id.clone(),
            result: result.into(),
            reason: reason.map(String::from),
            clock_untrusted: !self.ctx.clock_trusted,
            attempts: None,
        }));
        t::AccessDecision {
            device: reader,
            granted: result == "granted",
            reason,
            credential_type: credential.kind(),
        }
        .emit();
        let effects = self.lockouts.compared(reader, result == "granted", now);
        let began = effects
            .iter()
            .any(|e| matches!(e, crate::access::lockout::Effect::Began { .. }));
        // The panel is told only granted or denied: the precise reason would tell a guesser
        // which PINs exist (DESIGN §2). It goes to ZenCore and the audit log.
        let told = match (result, began) {
            ("granted", _) => None,
            (_, true) => Some("locked_out"),
            _ => Some("denied"),
        };
        out.merge(self.feedback(reader, answer, result == "granted", told));
        match decision {
            Decision::Granted {
                grant_id,
                booking_id,
                doors,
            } => {
                for (i, door) in doors.into_iter().enumerate() {
                    let request = Request {
                        action_id: format!("{}:{i}", (self.ctx.ids)()),
                        device: door,
                        command: Command::Unlock,
                        source: actions::Source::LocalCredential,
                        booking_id: Some(booking_id.clone()),
                        grant_id: Some(grant_id.clone()),
                        duration_s: None,
                    };
                    out.merge(self.request(request, now));
                }
            }
            Decision::Denied {
                reason, booking_id, ..
            } => {
                if let Some(device) = self.device_ref(reader) {
                    out.push(Effect::Event(NewEvent::new(
                        Data::AccessDenied(AccessDenied {
                            credential_type: credential.kind(),
                            reason,
                            booking_id,
                        }),
                        Some(device),
                        now,
                    )));
                }
            }
        }
        // After the denial's own event, so ZenCore reads them in the order they happened.
        out.merge(self.lockout_effects(effects, now));
        out
    }

    /// The answer to a panel (its `feedback` topic, with its `request_id`) or a reader (LED and
    /// buzzer).
    pub(super) fn feedback(
        &self,
        reader: &str,
        answer: Answer,
        granted: bool,
        reason: Option<&'static str>,
    ) -> Effects {
        let mut out = Effects::default();
        match answer {
            Answer::Panel(request_id) => out.push(Effect::Publish(Outgoing {
                topic: format!("{}/feedback", drivers::panel_prefix(&self.config, reader)),
                payload: crate::wire::panel::to_bytes(&crate::wire::panel::AccessFeedback {
                    request_id,
                    result: if granted { "granted" } else { "denied" },
                    reason,
                }),
                retain: false,
            })),
            Answer::Reader => out.push(Effect::Serial(
                reader.to_owned(),
                SerialCmd::Feedback { granted },
            )),
        }
        out
    }

    /// What the lockout machine asked for: guards to store, an `access.lockout` event when one
    /// begins, one audit record with the attempts when one ends.
    pub(super) fn lockout_effects(
        &self,
        effects: Vec<crate::access::lockout::Effect>,
        now: Millis,
    ) -> Effects {
        use crate::access::lockout::Effect as Step;
        let mut out = Effects::default();
        for e in effects {
            match e {
                Step::Store(reader, guard) => out.push(Effect::Lockout(reader, guard)),
                Step::Began {
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
                    if let Some(device) = self.device_ref(&reader) {
                        out.push(Effect::Event(NewEvent::new(
                            Data::AccessLockout(AccessLockout {
                                failures,
                                until,
                                lockouts,
                            }),
                            Some(device),
                            now,
                        )));
                    }
                }
                Step::Ended {
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
                    out.push(Effect::Audit(crate::audit::Entry {
                        at: until.rfc3339(),
                        credential_type: "any".into(),
                        reader,
                        doors: Vec::new(),
                        grant_id: None,
                        booking_id: None,
                        result: "locked_out".into(),
                        reason: Some(format!("locked out from {}", since.rfc3339())),
                        clock_untrusted: !self.ctx.clock_trusted,
                        attempts: Some(attempts),
                    }));
                }
            }
        }
        out
    }
}
