//! Card reads: any bit count and bytes, in every card format, decode or are refused — never a
//! panic — and a decoded Wiegand card is `<facility>:<card>` in decimal.
#![no_main]

use libfuzzer_sys::fuzz_target;
use zenedge::serial::cards::{decode, CardFormat};

fuzz_target!(|data: &[u8]| {
    let Some((head, bytes)) = data.split_first_chunk::<2>() else {
        return;
    };
    let bits = u16::from_le_bytes(*head);
    for format in CardFormat::ALL {
        if let Ok(card) = decode(format, bits, bytes) {
            if format != CardFormat::Raw {
                let (facility, number) = card.split_once(':').expect("facility:card");
                assert!(facility.parse::<u64>().is_ok() && number.parse::<u64>().is_ok());
            }
        }
    }
});
