//! The hub's access path: a credential presented at a panel or reader goes to the access
//! machine (`access::machine`); its effects become the hub's — the doors it opens as actions,
//! the answer on the panel's `feedback` topic or the reader's LED, events and records to store.

use super::*;
use crate::access::machine::{self as access, Answer};
use crate::telemetry::{events as t, InternalEvent};
use crate::wire::panel::{AccessFeedback, Told, Verdict};

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
        self.access(
            access::Input::Present {
                reader: reader.to_owned(),
                credential,
                answer: Answer::Panel(request_id),
            },
            now,
        )
    }

    /// Feeds the access machine and carries its effects over into the hub's.
    pub(super) fn access(&mut self, input: access::Input, now: Millis) -> Effects {
        let mut out = Effects::default();
        for effect in self.access.handle(input, &self.ctx) {
            match effect {
                access::Effect::Guard(reader, guard) => out.push(Effect::Lockout(reader, guard)),
                access::Effect::Audit(entry) => out.push(Effect::Audit(entry)),
                access::Effect::Answer {
                    reader,
                    answer,
                    told,
                } => out.push(self.feedback(&reader, answer, told)),
                access::Effect::Open {
                    doors,
                    grant_id,
                    booking_id,
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
                        out.merge(self.start(request, now));
                    }
                }
                access::Effect::Denied { reader, data } => {
                    out.0
                        .extend(self.reader_event(&reader, Data::AccessDenied(data), now));
                }
                access::Effect::LockedOut { reader, data } => {
                    out.0
                        .extend(self.reader_event(&reader, Data::AccessLockout(data), now));
                }
            }
        }
        out
    }

    /// An event about a configured panel or reader.
    fn reader_event(&self, reader: &str, data: Data, now: Millis) -> Option<Effect> {
        let device = self.device_ref(reader)?;
        Some(Effect::Event(NewEvent::new(data, Some(device), now)))
    }

    /// The answer to a panel (its `feedback` topic, with its `request_id`) or a reader (LED and
    /// buzzer). `told`: none when granted.
    fn feedback(&self, reader: &str, answer: Answer, told: Option<Told>) -> Effect {
        match answer {
            Answer::Panel(request_id) => Effect::Publish(Outgoing {
                topic: format!("{}/feedback", drivers::panel_prefix(&self.config, reader)),
                payload: crate::wire::panel::to_bytes(&AccessFeedback {
                    request_id,
                    result: match told {
                        None => Verdict::Granted,
                        Some(_) => Verdict::Denied,
                    },
                    reason: told,
                }),
                retain: false,
            }),
            Answer::Reader => Effect::Serial(
                reader.to_owned(),
                SerialCmd::Feedback {
                    granted: told.is_none(),
                },
            ),
        }
    }
}
