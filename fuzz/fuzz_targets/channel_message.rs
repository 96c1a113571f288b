//! A command channel message from ZenCore's broker: any bytes are a command message or a
//! refusal with its reason, never a panic; a parsed one names its request.
#![no_main]

use libfuzzer_sys::fuzz_target;
use zenedge::channel::message::{parse, reply, request_of};
use zenedge::inbound::Answer;

fuzz_target!(|data: &[u8]| {
    match parse(data) {
        Ok(m) => {
            let request = request_of(&m);
            let bytes = reply(request, &Answer::new(202, serde_json::json!({"status": "accepted"})));
            assert!(!bytes.is_empty());
        }
        Err(e) => assert!(!e.0.is_empty()),
    }
});
