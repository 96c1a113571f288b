//! Serial devices end to end: the real binary talking over pty pairs to a simulated Modbus
//! relay board and to libosdp's reference OSDP reader (Secure Channel), with a real mosquitto
//! and a loopback ZenCore.

mod common;

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::serial::{Board, OsdpBus, PyModbus, Reader};
use common::{at, command_body, device_events, rig, sha, SECRET};
use serde_json::json;

/// Waits (polling shared state, bounded) until `done` holds.
async fn until(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits for `device`'s second `door.closed`: one device's events arrive in order, so then
/// everything its earlier openings made has arrived too.
async fn closed_twice(r: &common::Rig, device: &str) {
    r.rx.wait_until(Duration::from_secs(30), "the second close", |log| {
        device_events(log, device)
            .iter()
            .filter(|e| e.0 == "door.closed")
            .count()
            == 2
    })
    .await;
}

/// Polls `/v1/devices` (no push channel; bounded) until `device`'s door is `want`.
async fn wait_door(r: &common::Rig, device: &str, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, v) = r.daemon.get("/v1/devices").await;
        let now = v
            .as_array()
            .into_iter()
            .flatten()
            .find(|d| d["id"] == device)
            .map(|d| d["door"].clone());
        if now == Some(json!(want)) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{device}'s door never {want}: {v}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until every one of `devices` came online a second time (after a replug).
async fn online_twice(r: &common::Rig, devices: &[&str]) {
    r.rx.wait_until(
        Duration::from_secs(30),
        "every device online again",
        |log| {
            devices.iter().all(|d| {
                common::device_events(log, d)
                    .iter()
                    .filter(|e| e.0 == "device.online")
                    .count()
                    == 2
            })
        },
    )
    .await;
}

fn relay(id: &str, link: &Path, address: u8, coil: u16, extra: &str) -> String {
    format!(
        r#"
[[devices]]
id = "{id}"
type = "strike"
driver = "modbus-relay"
port = "{port}"
address = {address}
coil = {coil}
offline_after = "1s"
{extra}
"#,
        port = link.display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relays_pulse_their_coil_go_offline_when_silent_and_survive_an_unplug() {
    let ports = tempfile::tempdir().unwrap();
    let link_a = ports.path().join("usb-relay-a");
    let link_b = ports.path().join("usb-relay-b");
    let board_a = Board::start(&link_a, 1);
    let board_b = Board::start(&link_b, 2);
    let devices = format!(
        "[presence]\ndebounce = \"0s\"\n{}{}",
        relay("strike-a", &link_a, 1, 3, "pulse = \"1s\""),
        relay("strike-b", &link_b, 2, 1, "pulse = \"700ms\"\nflash = true"),
    );
    let r = rig(&devices).await;
    r.wait_event("strike-a", "device.online", "port_opened")
        .await;
    r.wait_event("strike-b", "device.online", "port_opened")
        .await;
    // A board without flash is switched OFF as soon as its port opens (a crash may have left
    // it energised).
    assert_eq!(board_a.writes().first(), Some(&(3, 0x0000)));

    // Unlock without flash: coil 3 ON, confirmed, then OFF after the pulse.
    let (code, out, err) = r.cli(&["unlock", "strike-a"]).await;
    assert_eq!(code, 0, "{out}{err}");
    r.wait_event("strike-a", "device.action_completed", "succeeded")
        .await;
    until("coil 3 OFF after the pulse", || {
        let w = board_a.writes();
        let on = w.iter().position(|&x| x == (3, 0xFF00));
        on.is_some_and(|i| w[i..].contains(&(3, 0x0000)))
    })
    .await;

    // Unlock with flash: one board-timed write at 0x0200 + coil, 700 ms = 7.
    let (code, out, err) = r.cli(&["unlock", "strike-b"]).await;
    assert_eq!(code, 0, "{out}{err}");
    r.wait_event("strike-b", "device.action_completed", "succeeded")
        .await;
    assert!(
        board_b.writes().contains(&(0x0201, 7)),
        "{:?}",
        board_b.writes()
    );
    assert!(!board_b.writes().contains(&(1, 0xFF00)));

    // A board that stops answering is offline after its poll timeout, and back when it answers.
    board_a.silent.store(true, Ordering::SeqCst);
    r.wait_event("strike-a", "device.offline", "poll_timeout")
        .await;
    let (code, _, _) = r.cli(&["unlock", "strike-a"]).await;
    assert_ne!(code, 0, "an unlock of an offline relay fails");
    board_a.silent.store(false, Ordering::SeqCst);
    r.wait_event("strike-a", "device.online", "poll_reply")
        .await;

    // Unplug: the pty master closes; the daemon sees the hang-up.
    board_a.unplug();
    r.wait_event("strike-a", "device.offline", "port_closed")
        .await;
    // Replug: a new pty at the same path, no restart.
    let board_a = Board::start(&link_a, 1);
    r.rx.wait_until(Duration::from_secs(30), "strike-a online again", |log| {
        common::device_events(log, "strike-a")
            .iter()
            .filter(|e| e.0 == "device.online" && e.1 == "port_opened")
            .count()
            == 2
    })
    .await;
    let (code, out, err) = r.cli(&["unlock", "strike-a"]).await;
    assert_eq!(code, 0, "{out}{err}");
    until("the replugged board got the unlock", || {
        board_a.writes().contains(&(3, 0xFF00))
    })
    .await;

    let metrics = r.metrics().await;
    assert!(
        metrics.contains("zenedge_serial_port_losses_total{device=\"strike-a\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("zenedge_serial_port_open{device=\"strike-b\"} 1"));

    // A clean stop in the middle of a software-timed pulse switches the coil off first.
    let (code, out, err) = r.cli(&["unlock", "strike-a"]).await;
    assert_eq!(code, 0, "{out}{err}");
    let mut r = r;
    assert!(r.daemon.sigterm().success());
    assert_eq!(
        board_a.writes().last(),
        Some(&(3, 0x0000)),
        "{:?}",
        board_a.writes()
    );
    drop(board_b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_serial_port_thread_that_panics_is_started_again_and_the_daemon_keeps_running() {
    let ports = tempfile::tempdir().unwrap();
    let link = ports.path().join("usb-relay");
    let board = Board::start(&link, 1);
    let devices = format!(
        "[presence]\ndebounce = \"0s\"\n{}",
        relay("strike", &link, 1, 2, "pulse = \"1s\"")
    );
    let fault = vec![("ZENEDGE_FAULT".into(), "serial-port-panics".into())];
    let r = common::rig_with(&devices, fault).await;
    // The port opens, the thread panics (the hook): the device is reported offline, and the
    // port is opened again after the restart's backoff.
    r.rx.wait_until(
        Duration::from_secs(30),
        "strike back after the panic",
        |log| {
            let events = device_events(log, "strike");
            let opened = |e: &&(String, String)| e.0 == "device.online" && e.1 == "port_opened";
            let closed = events
                .iter()
                .position(|e| e.0 == "device.offline" && e.1 == "port_closed");
            closed.is_some_and(|i| {
                events[..i].iter().any(|e| opened(&e)) && events[i..].iter().any(|e| opened(&e))
            })
        },
    )
    .await;
    // The restarted thread drives the board: an unlock reaches the coil and succeeds.
    let (code, out, err) = r.cli(&["unlock", "strike"]).await;
    assert_eq!(code, 0, "{out}{err}");
    until("coil 2 ON", || board.writes().contains(&(2, 0xFF00))).await;
    let metrics = r.metrics().await;
    assert!(
        metrics.contains("zenedge_adapter_restarts_total 1"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pin_typed_on_libosdps_reader_opens_the_door_over_secure_channel() {
    let ports = tempfile::tempdir().unwrap();
    let link = ports.path().join("usb-osdp");
    let scbk: [u8; 16] = *b"zenedge-test-key";
    let reader = Reader::start(&link, 101, Some(scbk));
    let devices = format!(
        r#"
[presence]
debounce = "0s"

[[devices]]
id = "door-reader"
type = "reader"
driver = "osdp"
port = "{port}"
address = 101
scbk = "{key}"
pulse = "2s"
card_format = "raw"
"#,
        port = link.display(),
        key = hex::encode(scbk)
    );
    let r = rig(&devices).await;
    r.wait_event("door-reader", "device.online", "port_opened")
        .await;
    until("libosdp reports Secure Channel active", || {
        reader.sc_active()
    })
    .await;

    let body = command_body(
        "access.magic_link",
        json!({"grant_id": "g-pin", "booking_id": "b-pin", "meeting_space_id": "ms-test",
               "token_sha256": sha("tok"), "pin_sha256": sha("1234"),
               "valid_from": at(-60), "valid_until": at(3600)}),
    );
    let (status, answer) = r.command(&body, Some(SECRET), &[]).await;
    assert_eq!(status, 202, "{answer}");

    // A valid PIN: the reader's output pulses (2 s = 20 × 100 ms) and its LED turns green.
    let typed = Instant::now();
    reader.type_keys(b"1234#");
    r.wait_event("door-reader", "device.action_completed", "succeeded")
        .await;
    if let Some(out) = reader.first_output_at() {
        // Reported, not asserted: timing belongs to benchmarks.
        eprintln!("PIN typed -> OUT at the reader: {:?}", out - typed);
    }
    let done = r.first("device.action_completed");
    assert_eq!(done["data"]["source"], "local_credential");
    assert_eq!(done["data"]["grant_id"], "g-pin");
    until("OUT pulse and green LED at the reader", || {
        let c = reader.commands();
        let out = c.iter().any(|c| {
            matches!(c, libosdp::OsdpCommand::Output(o)
                if o.output_no == 0 && o.control_code == 5 && o.timer_count == 20)
        });
        let green = c.iter().any(|c| {
            matches!(c, libosdp::OsdpCommand::Led(l)
                if l.temporary.on_color == libosdp::OsdpLedColor::Green)
        });
        out && green
    })
    .await;

    // A card (with card_format = "raw", the hex of its bits) never matches a PIN's hash, even
    // one of the same text; only a grant's card_sha256 (or card_hmac).
    let denials = |log: &[common::Recorded]| {
        device_events(log, "door-reader")
            .iter()
            .filter(|e| e.0 == "access.denied")
            .count()
    };
    let body = command_body(
        "access.magic_link",
        json!({"grant_id": "g-pin-lookalike", "booking_id": "b-card", "meeting_space_id": "ms-test",
               "token_sha256": sha("tok-3"), "pin_sha256": sha("0a0b0c0d"),
               "valid_from": at(-60), "valid_until": at(3600)}),
    );
    let (status, answer) = r.command(&body, Some(SECRET), &[]).await;
    assert_eq!(status, 202, "{answer}");
    reader.present_card(&[0x0a, 0x0b, 0x0c, 0x0d]);
    r.rx.wait_until(Duration::from_secs(30), "the card denied", |log| {
        denials(log) == 1
    })
    .await;
    let body = command_body(
        "access.magic_link",
        json!({"grant_id": "g-card", "booking_id": "b-card", "meeting_space_id": "ms-test",
               "token_sha256": sha("tok-2"), "card_sha256": sha("0a0b0c0d"),
               "valid_from": at(-60), "valid_until": at(3600)}),
    );
    let (status, answer) = r.command(&body, Some(SECRET), &[]).await;
    assert_eq!(status, 202, "{answer}");
    reader.present_card(&[0x0a, 0x0b, 0x0c, 0x0d]);
    r.rx.wait_until(Duration::from_secs(30), "the card's unlock", |log| {
        log.iter().any(|x| {
            let j = x.json();
            j["event"] == "device.action_completed" && j["data"]["grant_id"] == "g-card"
        })
    })
    .await;

    // A wrong PIN: denied, red LED, no further pulse.
    reader.type_keys(b"9999#");
    r.rx.wait_until(Duration::from_secs(30), "the wrong PIN denied", |log| {
        denials(log) == 2
    })
    .await;
    until("red LED at the reader", || {
        reader.commands().iter().any(|c| {
            matches!(c, libosdp::OsdpCommand::Led(l)
                if l.temporary.on_color == libosdp::OsdpLedColor::Red)
        })
    })
    .await;
    assert_eq!(reader.outputs(), 2);

    // Unplug the reader, plug a new one in at the same path: back online without a restart.
    drop(reader);
    r.wait_event("door-reader", "device.offline", "port_closed")
        .await;
    let reader = Reader::start(&link, 101, Some(scbk));
    r.rx.wait_until(Duration::from_secs(30), "door-reader online again", |log| {
        common::device_events(log, "door-reader")
            .iter()
            .filter(|e| e.0 == "device.online")
            .count()
            == 2
    })
    .await;
    until("Secure Channel up again", || reader.sc_active()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_rs485_bus_carries_two_coils_of_one_board_and_a_second_board() {
    let ports = tempfile::tempdir().unwrap();
    let link = ports.path().join("usb-rs485");
    // Two boards (addresses 1 and 2) as pymodbus serves them, on one bus.
    let bus = PyModbus::start(&link, &[1, 2]);
    let devices = format!(
        "[presence]\ndebounce = \"0s\"\n{}{}{}",
        relay("left", &link, 1, 0, "pulse = \"1s\""),
        relay("right", &link, 1, 1, "pulse = \"1s\""),
        relay("back", &link, 2, 0, "pulse = \"1s\""),
    );
    let r = rig(&devices).await;
    for device in ["left", "right", "back"] {
        r.wait_event(device, "device.online", "port_opened").await;
    }
    // Each coil was put in its safe state (off) when the port opened.
    let opened = bus.writes();
    for coil in [(1, 0, false), (1, 1, false), (2, 0, false)] {
        assert!(opened.contains(&coil), "{opened:?}");
    }
    // Each unlock pulses only its own coil of its own board: on, then off after the pulse.
    for (device, address, coil) in [("right", 1, 1), ("back", 2, 0), ("left", 1, 0)] {
        let before = bus.writes().len();
        let (code, out, err) = r.cli(&["unlock", device]).await;
        assert_eq!(code, 0, "{device}: {out}{err}");
        r.wait_event(device, "device.action_completed", "succeeded")
            .await;
        until(&format!("{device}'s pulse to end"), || {
            bus.writes().len() >= before + 2
        })
        .await;
        assert_eq!(
            bus.writes()[before..],
            [(address, coil, true), (address, coil, false)],
            "{device}"
        );
    }

    // Unplugging the bus takes all three offline; plugging it back brings all three back.
    bus.unplug();
    for device in ["left", "right", "back"] {
        r.wait_event(device, "device.offline", "port_closed").await;
    }
    let _bus = PyModbus::start(&link, &[1, 2]);
    online_twice(&r, &["left", "right", "back"]).await;
}

/// A door contact wired to a discrete input of the relay board that drives the strike, read
/// with FC02 on the same bus (pymodbus serves the board): forced and unforced openings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_board_s_discrete_input_is_the_door_contact_of_its_strike() {
    let ports = tempfile::tempdir().unwrap();
    let link = ports.path().join("usb-rs485-doors");
    let bus = PyModbus::start(&link, &[1]);
    // Shut: the reed contact closes the circuit (the input reads ON, the default `closed`).
    bus.set_input(1, 3, true).await;
    let devices = format!(
        "[presence]\ndebounce = \"0s\"\n{}\n[[devices]]\nid = \"strike-contact\"\n\
         type = \"contact\"\ndriver = \"modbus-input\"\nport = \"{}\"\naddress = 1\ninput = 3\n",
        relay(
            "strike",
            &link,
            1,
            0,
            "pulse = \"1s\"\ncontact = \"strike-contact\""
        ),
        link.display()
    );
    let r = rig(&devices).await;
    r.wait_event("strike-contact", "device.online", "port_opened")
        .await;
    wait_door(&r, "strike", "closed").await;
    // Opened with no unlock: forced.
    bus.set_input(1, 3, false).await;
    r.wait_event("strike", "door.forced_open", "").await;
    bus.set_input(1, 3, true).await;
    r.wait_event("strike", "door.closed", "").await;
    // Unlocked by the operator, then opened: not forced.
    let (code, out, err) = r.cli(&["unlock", "strike"]).await;
    assert_eq!(code, 0, "{out}{err}");
    bus.set_input(1, 3, false).await;
    r.rx.wait_until(Duration::from_secs(30), "the second opening", |log| {
        device_events(log, "strike")
            .iter()
            .filter(|e| e.0 == "door.opened")
            .count()
            == 2
    })
    .await;
    wait_door(&r, "strike", "open").await;
    // Shut again: once that door.closed arrives, so has everything the opening made before it.
    bus.set_input(1, 3, true).await;
    closed_twice(&r, "strike").await;
    let forced = device_events(&r.rx.requests(), "strike")
        .iter()
        .filter(|e| e.0 == "door.forced_open")
        .count();
    assert_eq!(forced, 1, "an opening after an unlock was called forced");
    // Only the strike's coil was ever written: the input's reads write nothing.
    assert!(bus.writes().iter().all(|w| w.1 == 0), "{:?}", bus.writes());
}

/// A single-door reader: the strike on its output, the door contact on its input 0 (libosdp's
/// own reader, on Secure Channel, reports the input in osdp_ISTATR).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_osdp_reader_s_input_is_the_contact_of_the_door_it_opens() {
    let ports = tempfile::tempdir().unwrap();
    let link = ports.path().join("usb-osdp-door");
    let key = *b"door-reader-key!";
    let reader = Reader::start(&link, 3, Some(key));
    let devices = format!(
        "[presence]\ndebounce = \"0s\"\n[access]\nentry_grace = \"2s\"\n[[devices]]\nid = \"entrance\"\n\
         type = \"reader\"\ndriver = \"osdp\"\nport = \"{}\"\naddress = 3\nscbk = \"{}\"\n\
         pulse = \"1s\"\ncontact_input = 0\ncontact = \"entrance\"\nheld_open_after = \"2s\"\n",
        link.display(),
        hex::encode(key)
    );
    let r = rig(&devices).await;
    r.wait_event("entrance", "device.online", "port_opened")
        .await;
    until("Secure Channel", || reader.sc_active()).await;
    // Shut (input inactive), as the reader says when asked at link-up.
    wait_door(&r, "entrance", "closed").await;
    assert!(
        reader
            .commands()
            .iter()
            .any(|c| matches!(c, libosdp::OsdpCommand::Status(_))),
        "the door's state was not asked with osdp_ISTAT"
    );
    // Forced: the input goes active with no unlock; then held open past 2 s; then shut.
    reader.set_input(0, true);
    r.wait_event("entrance", "door.forced_open", "").await;
    r.wait_event("entrance", "door.held_open", "").await;
    reader.set_input(0, false);
    r.wait_event("entrance", "door.closed", "").await;
    // The operator opens it: the reader's OUT, then the opening is no force.
    let (code, out, err) = r.cli(&["unlock", "entrance"]).await;
    assert_eq!(code, 0, "{out}{err}");
    until("the reader's OUT", || reader.outputs() >= 1).await;
    reader.set_input(0, true);
    r.rx.wait_until(Duration::from_secs(30), "the second opening", |log| {
        device_events(log, "entrance")
            .iter()
            .filter(|e| e.0 == "door.opened")
            .count()
            == 2
    })
    .await;
    reader.set_input(0, false);
    closed_twice(&r, "entrance").await;
    let forced = device_events(&r.rx.requests(), "entrance")
        .iter()
        .filter(|e| e.0 == "door.forced_open")
        .count();
    assert_eq!(forced, 1, "an opening after an unlock was called forced");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_osdp_readers_on_one_bus_each_with_its_secure_channel_open_their_own_doors() {
    let ports = tempfile::tempdir().unwrap();
    let link = ports.path().join("usb-osdp-bus");
    let (key_a, key_b, key_c) = (
        *b"reader-a-key-16b",
        *b"reader-b-key-16b",
        *b"reader-c-key-16b",
    );
    let bus = OsdpBus::at(&link);
    let reader_a = Reader::on_bus(&bus, 1, Some(key_a));
    let reader_b = Reader::on_bus(&bus, 2, Some(key_b));
    let reader_c = Reader::on_bus(&bus, 126, Some(key_c));
    let reader = |id: &str, address: u8, key: &[u8; 16], room: &str| {
        format!(
            "[[devices]]\nid = \"{id}\"\ntype = \"reader\"\ndriver = \"osdp\"\nport = \"{}\"\n\
             address = {address}\nscbk = \"{}\"\npulse = \"2s\"\nmeeting_space_id = \"{room}\"\n",
            link.display(),
            hex::encode(key)
        )
    };
    let devices = format!(
        "[presence]\ndebounce = \"0s\"\n{}{}{}",
        reader("reader-a", 1, &key_a, "ms-test"),
        reader("reader-b", 2, &key_b, "ms-b"),
        reader("reader-c", 126, &key_c, "ms-c"),
    );
    let r = rig(&devices).await;
    for device in ["reader-a", "reader-b", "reader-c"] {
        r.wait_event(device, "device.online", "port_opened").await;
    }
    until("all three readers on Secure Channel", || {
        reader_a.sc_active() && reader_b.sc_active() && reader_c.sc_active()
    })
    .await;
    for (grant, room, pin) in [("g-a", "ms-test", "1111"), ("g-b", "ms-b", "2222")] {
        let body = command_body(
            "access.magic_link",
            json!({"grant_id": grant, "booking_id": format!("b-{grant}"), "meeting_space_id": room,
                   "token_sha256": sha(grant), "pin_sha256": sha(pin),
                   "valid_from": at(-60), "valid_until": at(3600)}),
        );
        let (status, answer) = r.command(&body, Some(SECRET), &[]).await;
        assert_eq!(status, 202, "{answer}");
    }
    // Each reader's PIN opens its own room's door: its own output, not the other's.
    reader_a.type_keys(b"1111#");
    until("reader A's output", || reader_a.outputs() == 1).await;
    reader_b.type_keys(b"2222#");
    until("reader B's output", || reader_b.outputs() == 1).await;
    assert_eq!(reader_a.outputs(), 1, "B's PIN opened A's door");
    // A's PIN at B is the wrong room.
    reader_b.type_keys(b"1111#");
    r.rx.wait_until(Duration::from_secs(30), "A's PIN refused at B", |log| {
        log.iter().any(|x| {
            let j = x.json();
            j["event"] == "access.denied"
                && j["data"]["device_id"] == "reader-b"
                && j["data"]["reason"] == "wrong_room"
        })
    })
    .await;

    // Pulling the bus takes both offline; a bus plugged back brings both back.
    assert_eq!(reader_c.outputs(), 0, "nobody opened C's door");
    drop((reader_a, reader_b, reader_c));
    bus.unplug();
    for device in ["reader-a", "reader-b", "reader-c"] {
        r.wait_event(device, "device.offline", "port_closed").await;
    }
    let bus = OsdpBus::at(&link);
    let _a = Reader::on_bus(&bus, 1, Some(key_a));
    let _b = Reader::on_bus(&bus, 2, Some(key_b));
    let _c = Reader::on_bus(&bus, 126, Some(key_c));
    online_twice(&r, &["reader-a", "reader-b", "reader-c"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_reader_on_the_default_key_is_given_its_key_once_and_then_works_on_it() {
    let ports = tempfile::tempdir().unwrap();
    let link = ports.path().join("usb-osdp-new");
    let scbk: [u8; 16] = *b"site-key-16bytes";
    let reader = Reader::start(&link, 5, Some(common::serial::NEW_READER));
    let devices = format!(
        "[presence]\ndebounce = \"0s\"\n[[devices]]\nid = \"new-reader\"\ntype = \"reader\"\n\
         driver = \"osdp\"\nport = \"{}\"\naddress = 5\nscbk = \"{}\"\ninstall_scbk = true\n\
         pulse = \"1s\"\n",
        link.display(),
        hex::encode(scbk)
    );
    let r = rig(&devices).await;
    // Its own key is refused (it has none), SCBK-D works, the key goes over in osdp_KEYSET,
    // and the reader comes online on a session with that key.
    r.wait_event("new-reader", "device.online", "port_opened")
        .await;
    until("Secure Channel on the installed key", || reader.sc_active()).await;
    let keysets: Vec<libosdp::OsdpCommand> = reader
        .commands()
        .into_iter()
        .filter(|c| matches!(c, libosdp::OsdpCommand::KeySet(_)))
        .collect();
    assert_eq!(keysets.len(), 1, "{keysets:?}");
    // The PIN path works on the new key.
    let body = command_body(
        "access.magic_link",
        json!({"grant_id": "g-new", "booking_id": "b-new", "meeting_space_id": "ms-test",
               "token_sha256": sha("tok"), "pin_sha256": sha("2580"),
               "valid_from": at(-60), "valid_until": at(3600)}),
    );
    let (status, answer) = r.command(&body, Some(SECRET), &[]).await;
    assert_eq!(status, 202, "{answer}");
    reader.type_keys(b"2580#");
    r.wait_event("new-reader", "device.action_completed", "succeeded")
        .await;
}

/// The 26 bits of an H10301 card, parity bits computed (`flip` one of them to break it), as
/// the reader sends them: first bit in the top bit of the first byte.
fn wiegand26(facility: u32, card: u32, flip: bool) -> Vec<u8> {
    let data = facility << 16 | card;
    let even = (data >> 12).count_ones() % 2;
    let odd = 1 - (data & 0xFFF).count_ones() % 2;
    let bits = even << 25 | data << 1 | (odd ^ u32::from(flip));
    (bits << 6).to_be_bytes().to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiegand_26_card_opens_its_grant_and_a_bad_parity_read_is_denied() {
    let ports = tempfile::tempdir().unwrap();
    let link = ports.path().join("usb-osdp-cards");
    let reader = Reader::start(&link, 7, None);
    let devices = format!(
        "[presence]\ndebounce = \"0s\"\n[[devices]]\nid = \"card-reader\"\ntype = \"reader\"\n\
         driver = \"osdp\"\nport = \"{}\"\naddress = 7\ninsecure = true\npulse = \"1s\"\n",
        link.display()
    );
    let r = rig(&devices).await;
    r.wait_event("card-reader", "device.online", "port_opened")
        .await;
    // The card is `<facility>:<card>`; its grant holds that string's SHA-256. Another grant has
    // a PIN made of the card's digits.
    for (grant, credential) in [
        (json!({"card_sha256": sha("1:2")}), "g-card"),
        (json!({"pin_sha256": sha("12")}), "g-digits"),
    ] {
        let mut data = json!({"grant_id": credential, "booking_id": "b", "meeting_space_id": "ms-test",
               "token_sha256": sha(credential), "valid_from": at(-60), "valid_until": at(3600)});
        for (k, v) in grant.as_object().unwrap() {
            data[k] = v.clone();
        }
        let (status, answer) = r
            .command(&command_body("access.magic_link", data), Some(SECRET), &[])
            .await;
        assert_eq!(status, 202, "{answer}");
    }
    let event = |log: &[common::Recorded], event: &str| {
        log.iter()
            .map(|x| x.json())
            .filter(|j| j["event"] == event && j["data"]["device_id"] == "card-reader")
            .collect::<Vec<_>>()
    };
    // Good parity: the grant's door (the reader's own output) opens.
    reader.present_wiegand(26, &wiegand26(1, 2, false));
    r.rx.wait_until(Duration::from_secs(30), "the card's unlock", |log| {
        event(log, "device.action_completed")
            .iter()
            .any(|j| j["data"]["grant_id"] == "g-card")
    })
    .await;
    // A parity bit flipped: denied as unknown_credential, counted, nothing opened.
    reader.present_wiegand(26, &wiegand26(1, 2, true));
    r.rx.wait_until(Duration::from_secs(30), "the bad read denied", |log| {
        event(log, "access.denied").len() == 1
    })
    .await;
    let denied = &r
        .rx
        .requests()
        .iter()
        .map(|x| x.json())
        .find(|j| j["event"] == "access.denied")
        .unwrap();
    assert_eq!(denied["data"]["reason"], "unknown_credential");
    assert_eq!(denied["data"]["credential_type"], "card");
    assert!(r
        .metrics()
        .await
        .contains("zenedge_card_reads_unreadable_total 1"));
    // A card whose number is 12 is `0:12`, not the PIN 12: denied too.
    reader.present_wiegand(26, &wiegand26(0, 12, false));
    r.rx.wait_until(Duration::from_secs(30), "the lookalike denied", |log| {
        event(log, "access.denied").len() == 2
    })
    .await;
    assert_eq!(
        event(&r.rx.requests(), "device.action_completed").len(),
        1,
        "only the good card opened"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_with_another_key_never_comes_online() {
    let ports = tempfile::tempdir().unwrap();
    let link = ports.path().join("usb-osdp");
    let reader = Reader::start(&link, 3, Some(*b"the-readers-key!"));
    let devices = format!(
        r#"
[presence]
debounce = "0s"

[[devices]]
id = "reader"
type = "reader"
driver = "osdp"
port = "{port}"
address = 3
scbk = "{key}"
"#,
        port = link.display(),
        key = hex::encode(b"not-the-same-key")
    );
    let r = rig(&devices).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = reqwest::get(format!("http://{}/metrics", r.daemon.admin))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if text.contains("zenedge_serial_secure_channel_failures_total{device=\"reader\"} ")
            && !text.contains("zenedge_serial_secure_channel_failures_total{device=\"reader\"} 0")
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no Secure Channel failure counted: {text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!reader.sc_active());
    assert!(!common::device_events(&r.rx.requests(), "reader")
        .iter()
        .any(|e| e.0 == "device.online"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_osdp_line_that_loses_a_reply_goes_silent_or_carries_a_busy_or_ostatr_reply() {
    let ports = tempfile::tempdir().unwrap();
    let link = ports.path().join("usb-osdp-line");
    let key = *b"reader-s-key-16b";
    let bus = OsdpBus::at(&link);
    let secure = Reader::on_bus(&bus, 1, Some(key));
    let plain = Reader::on_bus(&bus, 2, None);
    let devices = format!(
        "[presence]\ndebounce = \"0s\"\n\
         [[devices]]\nid = \"secure\"\ntype = \"reader\"\ndriver = \"osdp\"\nport = \"{0}\"\n\
         address = 1\nscbk = \"{1}\"\npulse = \"2s\"\n\
         [[devices]]\nid = \"plain\"\ntype = \"reader\"\ndriver = \"osdp\"\nport = \"{0}\"\n\
         address = 2\ninsecure = true\npulse = \"2s\"\n",
        link.display(),
        hex::encode(key)
    );
    let r = rig(&devices).await;
    for device in ["secure", "plain"] {
        r.wait_event(device, "device.online", "port_opened").await;
    }
    until("Secure Channel with the first reader", || {
        secure.sc_active()
    })
    .await;
    let sent_outs = |address: u8| -> Vec<Vec<u8>> {
        bus.faults
            .lock()
            .unwrap()
            .commands
            .iter()
            .filter(|c| c.0 == address && c.1 == 0x68)
            .map(|c| c.2.clone())
            .collect()
    };

    // A busy reader (on Secure Channel): the line answers the first OUT with osdp_BUSY; the
    // control panel sends the very same packet again, and the reader carries it out.
    bus.faults.lock().unwrap().busy_on_out = 1;
    let (code, out, err) = r.cli(&["unlock", "secure"]).await;
    assert_eq!(code, 0, "{out}{err}");
    r.wait_event("secure", "device.action_completed", "succeeded")
        .await;
    let outs = sent_outs(1);
    assert_eq!(outs.len(), 2, "{outs:?}");
    assert_eq!(
        outs[0], outs[1],
        "the command after BUSY is the same command"
    );
    until("the reader's output", || secure.outputs() == 1).await;

    // A reader that answers OUT with its output status (osdp_OSTATR): carried out.
    bus.faults.lock().unwrap().ostatr_for_out = true;
    let (code, out, err) = r.cli(&["unlock", "plain"]).await;
    assert_eq!(code, 0, "{out}{err}");
    r.wait_event("plain", "device.action_completed", "succeeded")
        .await;
    assert_eq!(plain.outputs(), 1);
    bus.faults.lock().unwrap().ostatr_for_out = false;

    // A reply lost once is not an outage: the next twenty get through, nobody went offline,
    // Secure Channel is up (again: libosdp's reader refuses the repeat's MAC and leaves it, and
    // the control panel makes a new session without taking the reader offline).
    let delivered = {
        let mut f = bus.faults.lock().unwrap();
        f.lose_reply_of = Some(1);
        f.delivered
    };
    until("a reply lost, then twenty delivered", || {
        let f = bus.faults.lock().unwrap();
        f.lost == 1 && f.delivered >= delivered + 20
    })
    .await;
    let offline = |log: &[common::Recorded]| {
        ["secure", "plain"]
            .iter()
            .flat_map(|d| device_events(log, d))
            .filter(|e| e.0 == "device.offline")
            .count()
    };
    let log = r.rx.requests();
    assert_eq!(
        offline(&log),
        0,
        "{:?} {:?}",
        device_events(&log, "secure"),
        device_events(&log, "plain")
    );
    until("Secure Channel after the lost reply", || secure.sc_active()).await;
    let (code, out, err) = r.cli(&["unlock", "secure"]).await;
    assert_eq!(code, 0, "{out}{err}");
    until("the reader's second output", || secure.outputs() == 2).await;

    // A line silent for 8 s: both readers offline (not sooner), and back when it speaks.
    let muted = Instant::now();
    bus.faults.lock().unwrap().mute = true;
    for device in ["secure", "plain"] {
        r.wait_event(device, "device.offline", "poll_timeout").await;
    }
    assert!(
        muted.elapsed() >= Duration::from_secs(7),
        "{:?}",
        muted.elapsed()
    );
    bus.faults.lock().unwrap().mute = false;
    online_twice(&r, &["secure", "plain"]).await;
    until("Secure Channel again", || secure.sc_active()).await;
}
