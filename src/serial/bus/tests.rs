//! The bus as a table: two relay boards' coils on one line, one request on the wire at a time.

use std::time::{Duration, Instant};

use super::*;
use crate::serial::modbus::{write_coil, Relay, RelaySettings};

fn relay(address: u8, coil: u16) -> Machine {
    Machine::Relay(Box::new(Relay::new(RelaySettings::new(
        address,
        coil,
        Duration::from_secs(1),
        false,
    ))))
}

/// Each frame sent as (address, function, register).
fn frames(step: &BusStep) -> Vec<(u8, u8, u16)> {
    step.send
        .iter()
        .map(|f| (f[0], f[1], u16::from_be_bytes([f[2], f[3]])))
        .collect()
}

/// What a board on the line answers: FC05 echoes, FC01 reports every coil off.
fn answer(request: &[u8]) -> Vec<u8> {
    match request[1] {
        5 => request.to_vec(),
        _ => {
            let mut r = vec![request[0], 1, 1, 0];
            let crc = crate::serial::modbus::crc16(&r);
            r.extend(crc.to_le_bytes());
            r
        }
    }
}

#[test]
fn one_request_on_the_wire_at_a_time_each_device_in_its_turn() {
    let t0 = Instant::now();
    let ms = |n| t0 + Duration::from_millis(n);
    // Coils 0 and 1 of board 1, and coil 0 of board 2, on one port.
    let mut bus = Bus::new(vec![relay(1, 0), relay(1, 1), relay(2, 0)]);
    // The port opens: one request only; the others wait their turn.
    let s = bus.opened(t0);
    assert_eq!(frames(&s), vec![(1, 5, 0)]);
    // A command for the third arrives meanwhile: it waits too.
    let s = bus.command(2, Cmd::Unlock { pulse: None }, ms(1));
    assert!(s.send.is_empty());
    // Answer every request as the boards would: each step puts at most one request on the
    // wire, and only after the one before was answered.
    let mut on_wire = write_coil(1, 0, false);
    let mut seen = vec![on_wire.clone()];
    let mut happened = Vec::new();
    for n in 2..40 {
        let s = bus.bytes(&answer(&on_wire), ms(n));
        assert!(s.send.len() <= 1, "two requests at once: {:?}", frames(&s));
        happened.extend(s.happened.iter().cloned());
        match s.send.first() {
            Some(f) => {
                on_wire = f.clone();
                seen.push(f.clone());
            }
            None => break,
        }
    }
    let writes: Vec<(u8, u16, u16)> = seen
        .iter()
        .filter(|f| f[1] == 5)
        .map(|f| {
            (
                f[0],
                u16::from_be_bytes([f[2], f[3]]),
                u16::from_be_bytes([f[4], f[5]]),
            )
        })
        .collect();
    // Each relay's OFF on open, and board 2's unlock (ON), each exactly once.
    for w in [(1, 0, 0), (1, 1, 0), (2, 0, 0), (2, 0, 0xFF00)] {
        assert_eq!(
            writes.iter().filter(|x| **x == w).count(),
            1,
            "{w:?} in {writes:?}"
        );
    }
    assert!(happened.contains(&(
        2,
        Happening::Done {
            cmd: Cmd::Unlock { pulse: None },
            result: Ok(())
        }
    )));
    for device in 0..3 {
        assert!(
            happened.contains(&(
                device,
                Happening::Online(crate::serial::LinkReason::PortOpened)
            )),
            "device {device} online: {happened:?}"
        );
    }
}

#[test]
fn an_owner_that_never_answers_gives_the_line_up_and_an_unplug_fails_waiting_commands() {
    let t0 = Instant::now();
    let ms = |n| t0 + Duration::from_millis(n);
    let mut bus = Bus::new(vec![relay(1, 0), relay(2, 0)]);
    let s = bus.opened(t0);
    assert_eq!(frames(&s), vec![(1, 5, 0)]);
    // Board 1 is silent: its retries keep the line until it gives up, then board 2 goes.
    let mut sent_by_2 = false;
    for n in (10..3_000).step_by(10) {
        let s = bus.tick(ms(n));
        if frames(&s).iter().any(|f| f.0 == 2) {
            sent_by_2 = true;
            break;
        }
        assert!(
            frames(&s).iter().all(|f| f.0 == 1),
            "at {n} ms: {:?}",
            frames(&s)
        );
    }
    assert!(sent_by_2, "board 2 never got the line");
    // A command waiting for its turn when the port goes: failed with port_closed.
    let _ = bus.command(0, Cmd::Lock, ms(3_001));
    let s = bus.closed();
    assert!(s.happened.contains(&(
        0,
        Happening::Done {
            cmd: Cmd::Lock,
            result: Err(SerialFailure::PortClosed)
        }
    )));
}
