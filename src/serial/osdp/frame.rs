//! OSDP framing: CRC and checksum, [`encode`] for commands, the stream [`Decoder`], and
//! [`parse_reply`] (the security block checked, the data decrypted). Pure.

use super::super::sc::{ScError, Session};

pub const SOM: u8 = 0x53;
pub(super) const MARK: u8 = 0xFF;
/// The longest packet accepted. Readers send far less; anything longer is noise.
pub const MAX_PACKET: usize = 1024;

pub(super) const CTRL_CRC: u8 = 0x04;
pub(super) const CTRL_SCB: u8 = 0x08;

pub mod code {
    pub const POLL: u8 = 0x60;
    pub const ID: u8 = 0x61;
    pub const CAP: u8 = 0x62;
    pub const OUT: u8 = 0x68;
    pub const LED: u8 = 0x69;
    pub const BUZ: u8 = 0x6A;
    /// Input status request (no data): answered osdp_ISTATR.
    pub const ISTAT: u8 = 0x65;
    pub const CHLNG: u8 = 0x76;
    pub const SCRYPT: u8 = 0x77;
    pub const KEYSET: u8 = 0x75;

    pub const ACK: u8 = 0x40;
    pub const NAK: u8 = 0x41;
    pub const PDID: u8 = 0x45;
    pub const PDCAP: u8 = 0x46;
    /// Input status: one byte per input, 0 inactive, 1 active.
    pub const ISTATR: u8 = 0x49;
    pub const OSTATR: u8 = 0x4A;
    pub const RAW: u8 = 0x50;
    pub const FMT: u8 = 0x51;
    pub const KEYPAD: u8 = 0x53;
    pub const CCRYPT: u8 = 0x76;
    pub const RMAC_I: u8 = 0x78;
    pub const BUSY: u8 = 0x79;
}

/// CRC-16 of OSDP (CRC-16/AUG-CCITT: polynomial 0x1021, initial 0x1D0F), sent low byte first.
pub fn crc16(data: &[u8]) -> u16 {
    let mut crc: u16 = 0x1D0F;
    for &b in data {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// The one-byte checksum of packets without CRC: two's complement of the byte sum.
pub fn checksum(data: &[u8]) -> u8 {
    data.iter()
        .fold(0u8, |a, &b| a.wrapping_add(b))
        .wrapping_neg()
}

/// Builds a command packet (with the leading mark byte). `scb` is the security block
/// including its length byte; with an active `session` the data is encrypted and the packet
/// carries a MAC.
pub fn encode(
    address: u8,
    seq: u8,
    code: u8,
    data: &[u8],
    scb: Option<&[u8]>,
    session: Option<&mut Session>,
) -> Vec<u8> {
    let mut p = vec![SOM, address & 0x7F, 0, 0, (seq & 3) | CTRL_CRC];
    if let Some(scb) = scb {
        p[4] |= CTRL_SCB;
        p.extend_from_slice(scb);
    }
    p.push(code);
    let mac_len = if session.is_some() { 4 } else { 0 };
    match &session {
        Some(s) if !data.is_empty() => p.extend(s.encrypt_command(data)),
        _ => p.extend_from_slice(data),
    }
    let total = p.len() + mac_len + 2;
    p[2..4].copy_from_slice(&(total as u16).to_le_bytes());
    if let Some(s) = session {
        let mac = s.sign_command(&p);
        p.extend_from_slice(&mac);
    }
    let crc = crc16(&p);
    p.extend_from_slice(&crc.to_le_bytes());
    let mut out = Vec::with_capacity(p.len() + 1);
    out.push(MARK);
    out.extend(p);
    out
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// A length field below the minimum or above [`MAX_PACKET`].
    Length,
    /// CRC or checksum mismatch.
    Crc,
}

/// Cuts packets out of a stream. Memory is bounded by [`MAX_PACKET`] plus one read.
#[derive(Debug, Default)]
pub struct Decoder {
    buf: Vec<u8>,
    /// Bytes discarded outside any packet (mark bytes excepted).
    pub noise: u64,
}

impl Decoder {
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    pub fn clear(&mut self) {
        self.buf.clear();
    }

    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The next complete packet (SOM to CRC), an error for a bad one (after which decoding
    /// goes on from the next byte), or `None` when more bytes are needed.
    pub fn next_packet(&mut self) -> Option<Result<Vec<u8>, FrameError>> {
        let start = self.buf.iter().position(|&b| b == SOM);
        let skipped = start.unwrap_or(self.buf.len());
        self.noise += self.buf[..skipped].iter().filter(|&&b| b != MARK).count() as u64;
        self.buf.drain(..skipped);
        if self.buf.len() < 5 {
            return None;
        }
        let len = usize::from(u16::from_le_bytes([self.buf[2], self.buf[3]]));
        let ctrl = self.buf[4];
        let min = if ctrl & CTRL_CRC != 0 { 8 } else { 7 };
        if !(min..=MAX_PACKET).contains(&len) {
            self.buf.drain(..1);
            return Some(Err(FrameError::Length));
        }
        let packet = self.buf.get(..len)?;
        let ok = if ctrl & CTRL_CRC != 0 {
            let body = &packet[..len - 2];
            crc16(body) == u16::from_le_bytes([packet[len - 2], packet[len - 1]])
        } else {
            checksum(&packet[..len - 1]) == packet[len - 1]
        };
        if !ok {
            self.buf.drain(..1);
            return Some(Err(FrameError::Crc));
        }
        let packet = packet.to_vec();
        self.buf.drain(..len);
        Some(Ok(packet))
    }
}

/// A reply, after its security block is checked and its data decrypted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub address: u8,
    pub seq: u8,
    pub code: u8,
    pub data: Vec<u8>,
    /// The security block's type, when there was one.
    pub scs: Option<u8>,
    pub scb_data: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    #[error("not a reply (a command, or our own echo on the bus)")]
    NotReply,
    #[error("packet too short for its security block")]
    Short,
    #[error("secure channel: {0}")]
    Sc(#[from] ScError),
    #[error("plain reply while the Secure Channel is active")]
    Plain,
}

/// Reads a validated packet (from [`Decoder`]) as a reply. With an active session the MAC is
/// checked and the data decrypted. Total: any packet gives a reply or an error.
pub fn parse_reply(packet: &[u8], session: Option<&mut Session>) -> Result<Reply, ReplyError> {
    let addr = *packet.get(1).ok_or(ReplyError::Short)?;
    if addr & 0x80 == 0 {
        return Err(ReplyError::NotReply);
    }
    let ctrl = *packet.get(4).ok_or(ReplyError::Short)?;
    let mut end = packet
        .len()
        .checked_sub(if ctrl & CTRL_CRC != 0 { 2 } else { 1 })
        .ok_or(ReplyError::Short)?;
    let mut pos = 5;
    let mut scs = None;
    let mut scb_data = Vec::new();
    if ctrl & CTRL_SCB != 0 {
        let scb_len = usize::from(*packet.get(5).ok_or(ReplyError::Short)?);
        let scb = packet.get(5..5 + scb_len).ok_or(ReplyError::Short)?;
        if scb_len < 2 {
            return Err(ReplyError::Short);
        }
        scs = Some(scb[1]);
        scb_data = scb[2..].to_vec();
        pos += scb_len;
    }
    let secured = matches!(scs, Some(0x16) | Some(0x18));
    let mut decrypt = None;
    match session {
        Some(s) if secured => {
            let mac_at = end
                .checked_sub(4)
                .filter(|&m| m > pos)
                .ok_or(ReplyError::Short)?;
            s.verify_reply(&packet[..mac_at], &packet[mac_at..end])?;
            end = mac_at;
            if scs == Some(0x18) {
                decrypt = Some(&*s);
            }
        }
        Some(_) => return Err(ReplyError::Plain),
        None => {}
    }
    let code = *packet
        .get(pos)
        .filter(|_| pos < end)
        .ok_or(ReplyError::Short)?;
    let raw = packet.get(pos + 1..end).unwrap_or(&[]);
    let data = match decrypt {
        Some(s) if !raw.is_empty() => s.decrypt_reply(raw)?,
        _ => raw.to_vec(),
    };
    Ok(Reply {
        address: addr & 0x7F,
        seq: ctrl & 3,
        code,
        data,
        scs,
        scb_data,
    })
}
