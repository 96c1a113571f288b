//! Every MQTT driver's payload mapper on arbitrary bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use zenedge::devices::drivers::{parse, TopicKind};

fuzz_target!(|data: &[u8]| {
    for kind in [
        TopicKind::Z2mState,
        TopicKind::Z2mAvailability,
        TopicKind::Z2mBridge,
        TopicKind::TasmotaLwt,
        TopicKind::TasmotaResult,
        TopicKind::TasmotaPower,
        TopicKind::HaState,
        TopicKind::HaAvailability,
        TopicKind::PanelStatus,
        TopicKind::PanelCredential,
        TopicKind::PanelAction,
    ] {
        let _ = parse(kind, data);
    }
});
