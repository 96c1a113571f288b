//! Card reads into credential strings (DESIGN section 4): the bits an OSDP reader reports
//! (`osdp_RAW`, with their count) decoded by the reader's `card_format` into
//! `<facility>:<card>` (both decimal), parity checked; `raw` keeps the bits as lowercase hex.
//! Pure.
//!
//! Bit positions count from the first bit sent (position 0, the leading parity bit). The
//! layouts are HID's: H10301 (26), H10306 (34), Corporate 1000 (35), H10304 (37).

use serde::Deserialize;

/// How a reader's card bits are read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CardFormat {
    /// H10301: facility 8 bits, card 16 bits, two parity bits.
    #[default]
    Wiegand26,
    /// H10306: facility 16, card 16.
    Wiegand34,
    /// HID Corporate 1000: company 12, card 20, three parity bits.
    Wiegand35,
    /// H10304: facility 16, card 19.
    Wiegand37,
    /// No format: the bits as lowercase hex.
    Raw,
}

impl CardFormat {
    pub const ALL: [CardFormat; 5] = [
        CardFormat::Wiegand26,
        CardFormat::Wiegand34,
        CardFormat::Wiegand35,
        CardFormat::Wiegand37,
        CardFormat::Raw,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CardFormat::Wiegand26 => "wiegand26",
            CardFormat::Wiegand34 => "wiegand34",
            CardFormat::Wiegand35 => "wiegand35",
            CardFormat::Wiegand37 => "wiegand37",
            CardFormat::Raw => "raw",
        }
    }

    fn bits(self) -> Option<u16> {
        match self {
            CardFormat::Wiegand26 => Some(26),
            CardFormat::Wiegand34 => Some(34),
            CardFormat::Wiegand35 => Some(35),
            CardFormat::Wiegand37 => Some(37),
            CardFormat::Raw => None,
        }
    }
}

/// Why a read is not a card of the reader's format. Such a read is denied, never matched.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CardError {
    #[error("{bits} bits read, {format} has {expected}")]
    Length {
        format: &'static str,
        bits: u16,
        expected: u16,
    },
    #[error("{0} bits claimed, {1} bytes sent")]
    Short(u16, usize),
    #[error("parity error")]
    Parity,
    #[error("no bits")]
    Empty,
}

/// Decodes `bit_count` bits of `data` (first bit in the top bit of the first byte).
pub fn decode(format: CardFormat, bit_count: u16, data: &[u8]) -> Result<String, CardError> {
    if bit_count == 0 {
        return Err(CardError::Empty);
    }
    if usize::from(bit_count).div_ceil(8) > data.len() {
        return Err(CardError::Short(bit_count, data.len()));
    }
    if let Some(expected) = format.bits().filter(|e| *e != bit_count) {
        return Err(CardError::Length {
            format: format.as_str(),
            bits: bit_count,
            expected,
        });
    }
    // Every position read below is under `bit_count`, which the bytes cover (checked above).
    let bit = |p: usize| (data[p / 8] >> (7 - p % 8)) & 1 == 1;
    // The bits from `from`, `len` of them, as a number (first bit most significant).
    let field =
        |from: usize, len: usize| (from..from + len).fold(0u64, |v, p| v << 1 | u64::from(bit(p)));
    // The parity bit at `p` with the ones `over` makes an even (or odd) count.
    let count = |p: usize, over: std::ops::Range<usize>| {
        (over.filter(|q| bit(*q)).count() + usize::from(bit(p))) % 2
    };
    let even = |p, over| count(p, over) == 0;
    let odd = |p, over| count(p, over) == 1;
    let (ok, facility, card) = match format {
        CardFormat::Raw => return Ok(hex::encode(&data[..usize::from(bit_count).div_ceil(8)])),
        CardFormat::Wiegand26 => (even(0, 1..13) && odd(25, 13..25), field(1, 8), field(9, 16)),
        CardFormat::Wiegand34 => (
            even(0, 1..17) && odd(33, 17..33),
            field(1, 16),
            field(17, 16),
        ),
        CardFormat::Wiegand37 => (
            even(0, 1..19) && odd(36, 18..36),
            field(1, 16),
            field(17, 19),
        ),
        CardFormat::Wiegand35 => {
            // Corporate 1000's three parity bits, as HID (and proxmark3) define them over the
            // 35 bits taken as one number: bit 34 - p for position p.
            let v = field(0, 35);
            let (mid, bot) = (v >> 32, v & 0xFFFF_FFFF);
            let parity = |x: u64| x.count_ones() % 2;
            let p1 = parity((mid & 1) ^ (bot & 0xB6DB_6DB6)) as u64 == (mid >> 1) & 1;
            let p2 = 1 - parity((mid & 3) ^ (bot & 0x6DB6_DB6C)) as u64 == bot & 1;
            let p3 = 1 - parity((mid & 3) ^ bot) as u64 == (mid >> 2) & 1;
            (p1 && p2 && p3, field(2, 12), field(14, 20))
        }
    };
    if !ok {
        return Err(CardError::Parity);
    }
    Ok(format!("{facility}:{card}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Packs `fields` (value, bit length), first bit first, into bytes.
    fn pack(fields: &[(u64, usize)]) -> (u16, Vec<u8>) {
        let mut bits = Vec::new();
        for &(value, len) in fields {
            for i in (0..len).rev() {
                bits.push((value >> i) & 1 == 1);
            }
        }
        let mut bytes = vec![0u8; bits.len().div_ceil(8)];
        for (p, b) in bits.iter().enumerate() {
            if *b {
                bytes[p / 8] |= 0x80 >> (p % 8);
            }
        }
        (bits.len() as u16, bytes)
    }

    fn parity(value: u64) -> u64 {
        u64::from(value.count_ones() % 2)
    }

    #[test]
    fn wiegand_26_is_facility_and_card_with_its_parity_checked() {
        // Facility 123, card 4567: even parity over the first 12 data bits, odd over the last.
        let (facility, card) = (123u64, 4567u64);
        let data = facility << 16 | card;
        let first = parity(data >> 12);
        let last = 1 - parity(data & 0xFFF);
        let (bits, bytes) = pack(&[(first, 1), (data, 24), (last, 1)]);
        assert_eq!(
            decode(CardFormat::Wiegand26, bits, &bytes),
            Ok("123:4567".into())
        );
        // One parity bit flipped: refused.
        let (_, bad) = pack(&[(1 - first, 1), (data, 24), (last, 1)]);
        assert_eq!(
            decode(CardFormat::Wiegand26, bits, &bad),
            Err(CardError::Parity)
        );
        // A data bit flipped: refused too.
        let (_, bad) = pack(&[(first, 1), (data ^ 1, 24), (last, 1)]);
        assert_eq!(
            decode(CardFormat::Wiegand26, bits, &bad),
            Err(CardError::Parity)
        );
        // The wrong length for the format.
        assert!(matches!(
            decode(CardFormat::Wiegand26, 32, &[0; 4]),
            Err(CardError::Length {
                bits: 32,
                expected: 26,
                ..
            })
        ));
        assert_eq!(
            decode(CardFormat::Wiegand26, 26, &[0; 2]),
            Err(CardError::Short(26, 2))
        );
        assert_eq!(decode(CardFormat::Wiegand26, 0, &[]), Err(CardError::Empty));
    }

    #[test]
    fn wiegand_34_and_37_and_raw() {
        let data = 4242u64 << 16 | 65_000;
        let (bits, bytes) = pack(&[
            (parity(data >> 16), 1),
            (data, 32),
            (1 - parity(data & 0xFFFF), 1),
        ]);
        assert_eq!(
            decode(CardFormat::Wiegand34, bits, &bytes),
            Ok("4242:65000".into())
        );
        // 37: facility 16, card 19; even parity over positions 1..=18, odd over 18..=35.
        let data = 31_000u64 << 19 | 500_000;
        let head = data >> 17; // positions 1..=18: the first 18 of 35 data bits
        let tail = data & 0x3FFFF; // positions 18..=35: the last 18
        let (bits, bytes) = pack(&[(parity(head), 1), (data, 35), (1 - parity(tail), 1)]);
        assert_eq!(
            decode(CardFormat::Wiegand37, bits, &bytes),
            Ok("31000:500000".into())
        );
        assert_eq!(
            decode(CardFormat::Raw, 12, &[0xAB, 0xC0]),
            Ok("abc0".into())
        );
    }

    #[test]
    fn corporate_1000_packs_as_hid_defines_it() {
        // Packed as proxmark3's Pack_C1k35s does: company 1234, card 567890.
        let (company, card) = (1234u64, 567_890u64);
        let mut bot: u64 = (card & 0xF_FFFF) << 1 | (company & 0x7FF) << 21;
        let mut mid: u64 = (company & 0x800) >> 11;
        mid |= parity((mid & 1) ^ (bot & 0xB6DB_6DB6)) << 1;
        bot |= 1 - parity((mid & 3) ^ (bot & 0x6DB6_DB6C));
        mid |= (1 - parity((mid & 3) ^ (bot & 0xFFFF_FFFF))) << 2;
        let v = mid << 32 | bot;
        let (bits, bytes) = pack(&[(v, 35)]);
        assert_eq!(
            decode(CardFormat::Wiegand35, bits, &bytes),
            Ok("1234:567890".into())
        );
        let (_, bad) = pack(&[(v ^ (1 << 10), 35)]);
        assert_eq!(
            decode(CardFormat::Wiegand35, bits, &bad),
            Err(CardError::Parity)
        );
    }

    #[test]
    fn any_bytes_decode_or_refuse_without_a_panic() {
        let mut x: u64 = 0x2545F4914F6CDD1D;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let len = (x % 8) as usize;
            let bytes: Vec<u8> = (0..len).map(|i| (x >> (i * 8)) as u8).collect();
            for format in CardFormat::ALL {
                let _ = decode(format, (x >> 40) as u16 % 70, &bytes);
            }
        }
    }
}
