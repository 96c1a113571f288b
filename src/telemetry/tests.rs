use std::sync::{Arc, Mutex};

use super::events::*;
use super::*;

/// Runs `f` with a subscriber that writes log lines into a buffer, and returns them.
fn logged(f: impl FnOnce()) -> String {
    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap_or_else(|p| p.into_inner()).extend(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buf = Buf::default();
    let writer = buf.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::DEBUG)
        .finish();
    tracing::subscriber::with_default(subscriber, f);
    let bytes = buf.0.lock().unwrap_or_else(|p| p.into_inner()).clone();
    String::from_utf8_lossy(&bytes).into_owned()
}

#[test]
fn a_happening_writes_its_line_with_every_field() {
    let out = logged(|| {
        MqttPublishFailed {
            topic: "room/panel/display",
            error: &"connection closed",
        }
        .emit()
    });
    assert!(out.contains("ERROR"), "{out}");
    assert!(out.contains("MQTT publish failed."), "{out}");
    assert!(out.contains("topic=\"room/panel/display\""), "{out}");
    assert!(out.contains("error=connection closed"), "{out}");
}

#[test]
fn a_happening_with_a_counter_moves_it_with_its_line() {
    let before = metrics().adapter_restarts.load(Ordering::Relaxed);
    let out = logged(|| {
        for _ in 0..1000 {
            AdapterRestarting {
                adapter: "mqtt",
                error: &"broker gone",
                retry_in_ms: 1000,
                restarts: 3,
            }
            .emit()
        }
    });
    assert!(out.contains("restarting it with backoff"), "{out}");
    assert!(
        out.contains("adapter=\"mqtt\"") && out.contains("restarts=3"),
        "{out}"
    );
    // The counters are process-wide and other tests may count too, but none 1,000 times: a
    // rise of 1,000 is this test's own.
    assert!(metrics().adapter_restarts.load(Ordering::Relaxed) >= before + 1000);
}

#[test]
fn a_decision_at_a_locked_out_reader_is_counted_and_not_logged() {
    let before = metrics().access_locked_out.load(Ordering::Relaxed);
    let out = logged(|| {
        for _ in 0..1000 {
            AccessDecision {
                device: "reader-1",
                granted: false,
                reason: Some("locked_out"),
                credential_type: "pin",
            }
            .emit()
        }
    });
    assert_eq!(out, "", "a flood of guesses must not flood the journal");
    // Other tests count a few locked-out attempts too, never 1,000.
    assert!(metrics().access_locked_out.load(Ordering::Relaxed) >= before + 1000);
    let out = logged(|| {
        AccessDecision {
            device: "reader-1",
            granted: false,
            reason: Some("unknown_credential"),
            credential_type: "pin",
        }
        .emit()
    });
    assert!(
        out.contains("result=\"denied\"") && out.contains("reason=\"unknown_credential\""),
        "{out}"
    );
    let text = prometheus(&Gauges::default());
    assert!(text.contains("zenedge_access_decisions_total{result=\"denied\"}"));
    assert!(text.contains("zenedge_adapter_restarts_total"));
}
