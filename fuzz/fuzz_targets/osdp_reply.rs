//! OSDP: the stream decoder, the reply parser (with and without a Secure Channel session) and
//! the control panel fed arbitrary bytes in every phase. Nothing may panic, and the decoder's
//! buffer stays bounded.
#![no_main]

use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use zenedge::serial::osdp::{parse_reply, Cp, Decoder, ReaderSettings, MAX_PACKET};
use zenedge::serial::sc::Session;

fuzz_target!(|data: &[u8]| {
    let mut d = Decoder::default();
    for chunk in data.chunks(7) {
        d.push(chunk);
        while let Some(p) = d.next_packet() {
            if let Ok(p) = p {
                let _ = parse_reply(&p, None);
                let mut s = Session::new(&[7; 16], [1; 8]);
                let _ = parse_reply(&p, Some(&mut s));
            }
        }
        assert!(d.buffered() <= MAX_PACKET + 7);
    }
    for key in [None, Some([3u8; 16])] {
        let mut cp = Cp::new(
            ReaderSettings::new(1, key, Duration::from_secs(1)),
            Box::new(|| [5; 8]),
            Instant::now(),
        );
        let t = Instant::now();
        cp.opened(t);
        for (i, chunk) in data.chunks(11).enumerate() {
            cp.bytes(chunk, t + Duration::from_millis(i as u64 * 50));
            cp.tick(t + Duration::from_millis(i as u64 * 50));
        }
    }
});
