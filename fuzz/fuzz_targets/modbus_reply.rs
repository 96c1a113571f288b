//! Modbus RTU: the answer parser for both functions and the relay machine fed arbitrary bytes.
#![no_main]

use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use zenedge::serial::modbus::{parse, Parse, Relay, RelaySettings};
use zenedge::serial::Cmd;

fuzz_target!(|data: &[u8]| {
    for function in [1u8, 5] {
        let mut buf = data;
        while !buf.is_empty() {
            match parse(buf, 1, function) {
                Parse::Incomplete => break,
                Parse::Skip => buf = &buf[1..],
                Parse::Frame { len, .. } => {
                    assert!(len <= buf.len());
                    buf = &buf[len..];
                }
            }
        }
    }
    for flash in [false, true] {
        let mut r = Relay::new(RelaySettings::new(1, 2, Duration::from_secs(1), flash));
        let t = Instant::now();
        r.opened(t);
        r.command(Cmd::Unlock { pulse: None }, t);
        for (i, chunk) in data.chunks(5).enumerate() {
            let now = t + Duration::from_millis(i as u64 * 100);
            r.bytes(chunk, now);
            r.tick(now);
        }
        r.closed();
    }
});
