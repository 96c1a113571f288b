//! Log output.
//!
//! Under systemd (stderr connected to the journal) log lines go to journald through
//! systemd-journal-logger with the identifier `zenedge`, each tracing field becoming a journal
//! field (`DEVICE=`, `EVENT_ID=`, `ERROR=`), so `journalctl -u zenedge ERROR=…` works. Elsewhere
//! they are human-readable lines on stderr. `RUST_LOG` sets the level (default `info` for the
//! daemon, `warn` for the CLI verbs, errors only for the demo, whose narration is the output).
//!
//! systemd-journal-logger owns the `log` facade (rumqttc and other crates log through it), so no
//! log→tracing bridge is installed: tracing events are forwarded to it instead.

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::{EnvFilter, Layer};

pub fn init(default: &str) {
    let filter = || EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    if systemd_journal_logger::connected_to_journal() {
        if let Ok(journal) = systemd_journal_logger::JournalLog::new() {
            let journal = journal.with_syslog_identifier("zenedge".into());
            if journal.install().is_ok() {
                log::set_max_level(log::LevelFilter::Info);
                let subscriber = tracing_subscriber::registry()
                    .with(filter())
                    .with(JournalLayer);
                let _ = tracing::subscriber::set_global_default(subscriber);
                return;
            }
        }
    }
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(filter())
        .with_writer(std::io::stderr)
        .with_target(false)
        // Colours only for a terminal: a log file gets no escape sequences at all, so any it
        // shows would be someone else's.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .fmt_fields(escaping_fields())
        .finish();
    let _ = tracing::subscriber::set_global_default(subscriber);
}

/// Text with every control character (ESC, CR, LF, DEL, C1…) written as an escape, so that text
/// from outside — a device payload, a request id, an HTTP error body — cannot forge a log line,
/// recolour the terminal or hide what follows (DESIGN §6).
pub fn escaped(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

/// The stderr formatter's fields: as tracing-subscriber's default (`message` bare, strings
/// quoted, others `name=value`), every value escaped.
struct EscapingFields;

fn escaping_fields() -> EscapingFields {
    EscapingFields
}

impl<'w> tracing_subscriber::fmt::FormatFields<'w> for EscapingFields {
    fn format_fields<R: tracing_subscriber::field::RecordFields>(
        &self,
        mut writer: tracing_subscriber::fmt::format::Writer<'w>,
        fields: R,
    ) -> std::fmt::Result {
        let mut line = Line::default();
        fields.record(&mut line);
        write!(writer, "{}", line.0)
    }
}

/// One event's fields as the stderr line shows them.
#[derive(Default)]
struct Line(String);

impl Line {
    fn put(&mut self, field: &Field, text: &str) {
        if !self.0.is_empty() {
            self.0.push(' ');
        }
        if field.name() != "message" {
            self.0.push_str(field.name());
            self.0.push('=');
        }
        self.0.push_str(&escaped(text));
    }
}

impl Visit for Line {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.put(field, value);
        } else {
            self.put(field, &format!("{value:?}"));
        }
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.put(field, &format!("{value:?}"));
    }
}

/// Forwards each tracing event to the `log` logger (journald) with its fields as key/values.
struct JournalLayer;

impl<S: Subscriber> Layer<S> for JournalLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let fields = Fields::of(event);
        let meta = event.metadata();
        let level = match *meta.level() {
            tracing::Level::ERROR => log::Level::Error,
            tracing::Level::WARN => log::Level::Warn,
            tracing::Level::INFO => log::Level::Info,
            tracing::Level::DEBUG => log::Level::Debug,
            tracing::Level::TRACE => log::Level::Trace,
        };
        let kvs: Vec<(&str, &str)> = fields
            .pairs
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        log::logger().log(
            &log::Record::builder()
                .args(format_args!("{}", fields.message))
                .level(level)
                .target(meta.target())
                .module_path(meta.module_path())
                .file(meta.file())
                .line(meta.line())
                .key_values(&kvs)
                .build(),
        );
    }
}

/// An event's message and its other fields, as text.
#[derive(Debug, Default, PartialEq, Eq)]
struct Fields {
    message: String,
    pairs: Vec<(String, String)>,
}

impl Fields {
    fn of(event: &Event<'_>) -> Fields {
        let mut f = Fields::default();
        event.record(&mut f);
        f
    }

    fn put(&mut self, field: &Field, value: String) {
        let value = match escaped(&value) {
            std::borrow::Cow::Borrowed(_) => value,
            std::borrow::Cow::Owned(e) => e,
        };
        if field.name() == "message" {
            self.message = value;
        } else {
            self.pairs.push((field.name().to_owned(), value));
        }
    }
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, value.to_owned());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, value.to_string());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, value.to_string());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, value.to_string());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.put(field, format!("{value:?}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// Captures what the journal layer would hand to journald.
    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<Fields>>>);

    impl<S: Subscriber> Layer<S> for Capture {
        fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
            self.0.lock().unwrap().push(Fields::of(event));
        }
    }

    #[test]
    fn control_characters_are_escaped_in_journal_fields_and_on_stderr() {
        assert_eq!(escaped("plain text, ünïcode"), "plain text, ünïcode");
        assert_eq!(
            escaped("x\u{1b}[32m INFO Door locked.\r\nnext\u{7f}\u{9b}"),
            "x\\u{1b}[32m INFO Door locked.\\r\\nnext\\u{7f}\\u{9b}"
        );
        let capture = Capture::default();
        let subscriber = tracing_subscriber::registry().with(capture.clone());
        tracing::subscriber::with_default(subscriber, || {
            let error = "bad\r\n\u{1b}[32mINFO Door locked.";
            tracing::warn!(message = "Malformed.", action = "a\nb", %error);
        });
        let got = capture.0.lock().unwrap();
        for (_, v) in &got[0].pairs {
            assert!(!v.chars().any(char::is_control), "{v:?}");
        }
        // The stderr formatter, into a buffer.
        let buf = Arc::new(Mutex::new(Vec::<u8>::new()));
        let writer = {
            let buf = buf.clone();
            move || BufWriter(buf.clone())
        };
        let subscriber = tracing_subscriber::fmt()
            .with_writer(writer)
            .with_ansi(false)
            .fmt_fields(escaping_fields())
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let error = "bad\r\n\u{1b}[32mINFO Door locked.";
            tracing::warn!(message = "Malformed.", action = "a\nb", %error);
        });
        let text = String::from_utf8(buf.lock().unwrap().clone()).unwrap();
        assert_eq!(text.lines().count(), 1, "{text:?}");
        assert!(!text.trim_end().chars().any(char::is_control), "{text:?}");
        assert!(text.contains("error=bad\\r\\n\\u{1b}[32mINFO"), "{text:?}");
    }

    struct BufWriter(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for BufWriter {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn fields_become_key_values_and_the_message_stays_plain() {
        let capture = Capture::default();
        let subscriber = tracing_subscriber::registry().with(capture.clone());
        tracing::subscriber::with_default(subscriber, || {
            let error = std::io::Error::other("boom");
            tracing::warn!(message = "Delivery failed.", device = "front-door", sequence = 42u64, %error);
        });
        let got = capture.0.lock().unwrap();
        assert_eq!(got[0].message, "Delivery failed.");
        assert_eq!(
            got[0].pairs,
            vec![
                ("device".to_string(), "front-door".to_string()),
                ("sequence".to_string(), "42".to_string()),
                ("error".to_string(), "boom".to_string()),
            ]
        );
    }
}
