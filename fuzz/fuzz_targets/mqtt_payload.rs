//! Every MQTT driver's payload mapper on arbitrary bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use zenedge::devices::drivers::{parse, TopicKind};

fuzz_target!(|data: &[u8]| {
    for kind in TopicKind::ALL {
        let _ = parse(kind, data);
    }
});
