//! The config loader on arbitrary text: an error naming a key, never a panic.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = zenedge::config::Config::from_toml(text, Path::new("fuzz.toml"));
    }
});
