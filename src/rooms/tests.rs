//! The rooms machine as a table: bookings, ZenCore's state, panel actions and ticks → effects.

use super::*;

const MIN: u64 = 60_000;

fn config() -> Config {
    crate::config::testing::parse(
        r#"
[scheduler]
no_show_release = "10m"
[[devices]]
id = "panel"
type = "panel"
driver = "zenedge-panel"
"#,
    )
}

/// Each effect in one line: an event's kind, device and status; a panel message's topic end,
/// state or result.
fn lines(out: &[Effect]) -> Vec<String> {
    out.iter()
        .map(|e| match e {
            Effect::Event(e) => {
                let fields = e.fields();
                format!(
                    "event {} {} {}",
                    e.kind().as_str(),
                    e.device.as_ref().map_or("-", |d| d.id.as_str()),
                    fields["status"].as_str().unwrap_or("")
                )
            }
            Effect::Mark(id, _) => format!("mark {id}"),
            Effect::Forget(id) => format!("forget {id}"),
            Effect::Malformed => "malformed".into(),
            Effect::Publish(p) => {
                let v: Value = serde_json::from_slice(&p.payload).unwrap();
                let topic = p.topic.rsplit('/').next().unwrap_or("");
                match topic {
                    "display" => format!(
                        "display {} retain={} next={}",
                        v["state"].as_str().unwrap_or(""),
                        p.retain,
                        v["next"]["booking_id"].as_str().unwrap_or("-")
                    ),
                    _ => format!(
                        "{topic} {} {}",
                        v["result"].as_str().unwrap_or(""),
                        v["reason"].as_str().unwrap_or("-")
                    ),
                }
            }
        })
        .collect()
}

fn no_ids() -> String {
    String::new()
}

#[test]
fn the_rooms_machine_as_a_table_of_inputs_and_effects() {
    let mut rooms = Machine::new(&config(), Millis(0));
    let ctx = |t: u64| Ctx {
        now: Millis(t),
        clock_trusted: true,
        ids: no_ids,
    };
    let booking = |id: &str, start: u64, end: u64| Booking {
        booking_id: id.into(),
        meeting_space_id: "ms".into(),
        start: Millis(start),
        end: Millis(end),
        title: None,
        closed: None,
        started: None,
        unlock_during_meeting: None,
    };
    let check_in = serde_json::json!({"action": "check_in", "request_id": 1});
    let dance = serde_json::json!({"action": "dance", "request_id": 2});
    let explicit = Explicit {
        meeting_space_id: "ms".into(),
        state: "maintenance".into(),
        booking_id: None,
        message: Value::Null,
    };
    let rows: Vec<(u64, Input<'_>, Vec<&str>)> = vec![
        // The first tick shows every panel its room.
        (0, Input::Tick, vec!["display available retain=true next=-"]),
        (0, Input::Tick, vec![]),
        (
            MIN,
            Input::Booking(booking("b1", 30 * MIN, 90 * MIN)),
            vec!["display available retain=true next=b1"],
        ),
        // Check-in opens 15 minutes before the start: until then no booking is there to check into.
        (
            2 * MIN,
            Input::PanelAction {
                panel: "panel",
                message: &check_in,
            },
            vec!["feedback refused no_booking"],
        ),
        (
            2 * MIN,
            Input::PanelAction {
                panel: "panel",
                message: &dance,
            },
            vec!["malformed", "feedback refused malformed"],
        ),
        // A panel this machine does not have: nothing.
        (
            2 * MIN,
            Input::PanelAction {
                panel: "stranger",
                message: &check_in,
            },
            vec![],
        ),
        // ZenCore's state is shown over the schedule's view until that view changes.
        (
            3 * MIN,
            Input::Explicit(explicit),
            vec!["display maintenance retain=true next=b1"],
        ),
        (
            15 * MIN,
            Input::Tick,
            // A reserved booking is both shown and next.
            vec!["display reserved retain=true next=b1"],
        ),
        (
            31 * MIN,
            Input::Tick,
            vec![
                "event meeting.status_update - in_use",
                "mark b1",
                "display in_use retain=true next=-",
            ],
        ),
        (
            32 * MIN,
            Input::PanelAction {
                panel: "panel",
                message: &check_in,
            },
            vec![
                "event meeting.status_update panel checked_in",
                "feedback ok -",
                "mark b1",
                "display in_use retain=true next=-",
            ],
        ),
    ];
    for (i, (t, input, want)) in rows.into_iter().enumerate() {
        let out = rooms.handle(input, &ctx(t));
        assert_eq!(lines(&out), want, "row {i} at {t} ms");
    }
}
