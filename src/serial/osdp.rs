//! OSDP v2, control-panel side, for card and PIN readers on RS-485.
//!
//! [`Decoder`] cuts packets out of a byte stream (bounded, resynchronising on noise, bad CRCs
//! and impossible lengths); [`encode`] builds commands; [`Cp`] is the state machine of one
//! reader: ID and CAP on first contact, the Secure Channel handshake, the POLL loop, retries
//! with the same sequence number, and LED/BUZ/OUT commands. No I/O and no clock of its own.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::sc::{Block, Session};
use super::types::{Cmd, CredentialKind, Happening, LinkReason, SerialFailure, Step};
use crate::telemetry::{events as t, InternalEvent};

mod frame;

pub use frame::*;

/// The fixed settings of one reader.
#[derive(Clone)]
pub struct ReaderSettings {
    pub address: u8,
    /// The Secure Channel base key; `None` runs without Secure Channel (`insecure = true`).
    pub scbk: Option<Block>,
    /// The length of an OUT pulse for a strike wired to the reader.
    pub pulse: Duration,
    /// Time allowed for each reply (OSDP: 200 ms).
    pub reply_timeout: Duration,
    /// Gap between polls when idle.
    pub poll_every: Duration,
    /// Wait before starting over after the link failed.
    pub retry_wait: Duration,
    /// Silence (no valid reply) after which the reader is offline: libosdp's 8 s, so one lost
    /// reply or a glitch on the bus is not an outage.
    pub offline_after: Duration,
    /// A reader that answers BUSY is asked again this much later.
    pub busy_wait: Duration,
    /// How the reader's card reads are decoded.
    pub card_format: super::cards::CardFormat,
    /// A new reader still on the default key (SCBK-D) gets `scbk` with osdp_KEYSET, once.
    pub install_scbk: bool,
    /// The reader's input wired to the door contact (0-based): asked with osdp_ISTAT when the
    /// link comes up, then told by osdp_ISTATR in answer to polls. Inactive (0) is shut.
    pub contact_input: Option<u8>,
}

/// The Secure Channel base key every reader has before it is given its own (OSDP's SCBK-D).
pub const SCBK_D: Block = [
    0x30, 0x31, 0x32, 0x33, 0x34, 0x35, 0x36, 0x37, 0x38, 0x39, 0x3A, 0x3B, 0x3C, 0x3D, 0x3E, 0x3F,
];

impl ReaderSettings {
    pub fn new(address: u8, scbk: Option<Block>, pulse: Duration) -> ReaderSettings {
        ReaderSettings {
            address,
            scbk,
            pulse,
            reply_timeout: Duration::from_millis(200),
            poll_every: Duration::from_millis(100),
            retry_wait: Duration::from_secs(1),
            offline_after: Duration::from_secs(8),
            busy_wait: Duration::from_millis(800),
            card_format: super::cards::CardFormat::default(),
            install_scbk: false,
            contact_input: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Closed,
    /// Waiting `retry_wait` before starting over.
    Waiting(Instant),
    Id,
    Cap,
    Challenge,
    Crypt(Block),
    /// On a session with SCBK-D: the reader is being given its key.
    Keyset,
    Online,
}

/// The two replies a reader sends in the clear even on Secure Channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PlainSignal {
    Busy,
    SessionLost,
}

/// A command the CP queues while online.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Queued {
    code: u8,
    data: Vec<u8>,
    /// The command it carries out (reported when ACKed or refused); feedback has none.
    cmd: Option<Cmd>,
}

struct InFlight {
    code: u8,
    /// The command's data, to send it again on a new session.
    data: Vec<u8>,
    cmd: Option<Cmd>,
    packet: Vec<u8>,
    deadline: Instant,
}
/// Digits kept while a PIN is typed; more is someone leaning on the keypad.
const MAX_PIN: usize = 16;
/// A PIN typed this long ago without `#` is forgotten.
const PIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Counters for `/metrics`.
#[derive(Debug, Default, Clone, Copy)]
pub struct CpCounters {
    pub frames: u64,
    pub crc_errors: u64,
    pub length_errors: u64,
    pub sc_failures: u64,
    pub naks: u64,
}

/// The control panel for one reader.
pub struct Cp {
    s: ReaderSettings,
    random: Box<dyn FnMut() -> [u8; 8] + Send>,
    decoder: Decoder,
    phase: Phase,
    seq: u8,
    session: Option<Session>,
    cp_random: [u8; 8],
    inflight: Option<InFlight>,
    queue: VecDeque<Queued>,
    next_poll: Instant,
    online: bool,
    linked_since_open: bool,
    pin: String,
    pin_at: Option<Instant>,
    /// The last valid reply (or the start of the link): silence is measured from here.
    last_valid: Instant,
    /// The packet a BUSY reader is asked again, and when: the same bytes (same sequence
    /// number), in whatever phase; the line is free for the others meanwhile.
    held: Option<(InFlight, Instant)>,
    /// The next handshake uses SCBK-D (`install_scbk`: the reader refused its own key).
    default_key: bool,
    /// The reader was given its key (osdp_KEYSET answered ACK): never again.
    provisioned: bool,
    /// The door contact on `contact_input` as last reported (`None` after the link fails, so
    /// the state read when it is back is reported).
    contact: Option<bool>,
    pub counters: CpCounters,
}

impl Cp {
    /// `random` supplies the Secure Channel challenges (the shell passes the OS generator).
    pub fn new(s: ReaderSettings, random: Box<dyn FnMut() -> [u8; 8] + Send>, now: Instant) -> Cp {
        Cp {
            s,
            random,
            decoder: Decoder::default(),
            phase: Phase::Closed,
            seq: 0,
            session: None,
            cp_random: [0; 8],
            inflight: None,
            queue: VecDeque::new(),
            next_poll: now,
            online: false,
            linked_since_open: false,
            pin: String::new(),
            pin_at: None,
            last_valid: now,
            held: None,
            default_key: false,
            provisioned: false,
            contact: None,
            counters: CpCounters::default(),
        }
    }

    pub fn noise_bytes(&self) -> u64 {
        self.decoder.noise
    }

    pub fn sc_active(&self) -> bool {
        self.session.is_some() && self.phase == Phase::Online
    }

    pub fn opened(&mut self, now: Instant) -> Step {
        self.linked_since_open = false;
        self.restart(now)
    }

    /// Starts the link over: sequence 0, ID, CAP, handshake.
    fn restart(&mut self, now: Instant) -> Step {
        self.decoder.clear();
        self.session = None;
        self.inflight = None;
        self.seq = 0;
        self.phase = Phase::Id;
        self.last_valid = now;
        self.held = None;
        let mut step = Step::default();
        self.send(code::ID, vec![0], None, None, now, &mut step);
        step
    }

    pub fn closed(&mut self) -> Step {
        let mut step = Step::default();
        self.phase = Phase::Closed;
        self.session = None;
        self.decoder.clear();
        self.fail_all(SerialFailure::PortClosed, &mut step);
        if self.online {
            self.online = false;
            step.happened
                .push(Happening::Offline(LinkReason::PortClosed));
        }
        step
    }

    fn fail_all(&mut self, error: SerialFailure, step: &mut Step) {
        let inflight = self.inflight.take().and_then(|f| f.cmd);
        let held = self.held.take().and_then(|(f, _)| f.cmd);
        let queued: Vec<Cmd> = self.queue.drain(..).filter_map(|q| q.cmd).collect();
        for cmd in inflight.into_iter().chain(held).chain(queued) {
            step.happened.push(Happening::Done {
                cmd,
                result: Err(error.clone()),
            });
        }
    }

    pub fn command(&mut self, cmd: Cmd, now: Instant) -> Step {
        if self.phase != Phase::Online {
            let mut step = Step::default();
            if !matches!(cmd, Cmd::Feedback { .. }) {
                step.happened.push(Happening::Done {
                    cmd,
                    result: Err(SerialFailure::DeviceOffline),
                });
            }
            return step;
        }
        match cmd {
            Cmd::Unlock { pulse } => {
                let pulse = pulse.unwrap_or(self.s.pulse);
                let tenths = u16::try_from(pulse.as_millis().div_ceil(100))
                    .unwrap_or(u16::MAX)
                    .max(1);
                let t = tenths.to_le_bytes();
                // Output 0, control 5: temporary ON, back to the permanent state (OFF) when
                // the reader's own timer runs out — a crash here cannot hold the door open.
                self.queue.push_back(Queued {
                    code: code::OUT,
                    data: vec![0, 5, t[0], t[1]],
                    cmd: Some(cmd),
                });
            }
            // Control 2: permanent ON, cancelling a timed pulse (passage mode; a Lock ends it).
            Cmd::Hold => self.queue.push_back(Queued {
                code: code::OUT,
                data: vec![0, 2, 0, 0],
                cmd: Some(cmd),
            }),
            Cmd::Lock => self.queue.push_back(Queued {
                code: code::OUT,
                // Control 1: permanent OFF, cancelling a timed pulse.
                data: vec![0, 1, 0, 0],
                cmd: Some(cmd),
            }),
            Cmd::Feedback { granted } => {
                let (color, beeps, on) = if granted { (2, 1, 5) } else { (1, 3, 2) };
                // LED 0 of reader 0: a temporary colour for 3 s, permanent state untouched.
                self.queue.push_back(Queued {
                    code: code::LED,
                    data: vec![0, 0, 2, 30, 0, color, color, 30, 0, 0, 0, 0, 0, 0],
                    cmd: None,
                });
                self.queue.push_back(Queued {
                    code: code::BUZ,
                    data: vec![0, 2, on, 2, beeps],
                    cmd: None,
                });
            }
        }
        let mut step = Step::default();
        self.pump(now, &mut step);
        step
    }

    /// Nothing to do on shutdown: the reader times its own outputs.
    pub fn shutdown(&mut self, _now: Instant) -> Step {
        Step::default()
    }

    /// Whether a command is on the wire, waiting for its reply (a shared bus is not free).
    pub fn awaiting(&self) -> bool {
        self.inflight.is_some()
    }

    pub fn idle(&self) -> bool {
        self.queue.is_empty()
    }

    fn send(
        &mut self,
        code: u8,
        data: Vec<u8>,
        cmd: Option<Cmd>,
        scb: Option<Vec<u8>>,
        now: Instant,
        step: &mut Step,
    ) {
        let (scb, session) = match (&scb, self.session.as_mut()) {
            (Some(_), _) => (scb, None),
            (None, Some(s)) if matches!(self.phase, Phase::Online | Phase::Keyset) => {
                let scs = if data.is_empty() { 0x15 } else { 0x17 };
                (Some(vec![2, scs]), Some(s))
            }
            _ => (None, None),
        };
        let packet = encode(
            self.s.address,
            self.seq,
            code,
            &data,
            scb.as_deref(),
            session,
        );
        step.send.push(packet.clone());
        self.inflight = Some(InFlight {
            code,
            data,
            cmd,
            packet,
            deadline: now + self.s.reply_timeout,
        });
    }

    fn next_seq(&mut self) {
        self.seq = if self.seq >= 3 { 1 } else { self.seq + 1 };
    }

    /// What a reply without a security block says when it is one of the two a reader sends
    /// in the clear whatever the session: osdp_BUSY (no data, sequence number 0 or, from
    /// readers that echo it, the command's), or — on Secure Channel — osdp_NAK "sequence" (4)
    /// or "Secure Channel condition" (6) to the command in flight: the reader lost the session.
    fn plain_signal(&self, packet: &[u8], expected_seq: u8) -> Option<PlainSignal> {
        if packet.get(4).is_none_or(|ctrl| ctrl & CTRL_SCB != 0) {
            return None;
        }
        let r = parse_reply(packet, None).ok()?;
        if r.address != self.s.address {
            return None;
        }
        if r.code == code::BUSY && r.data.is_empty() && (r.seq == 0 || r.seq == expected_seq) {
            return Some(PlainSignal::Busy);
        }
        let on_session = self.phase == Phase::Online && self.session.is_some();
        if on_session
            && r.code == code::NAK
            && r.seq == expected_seq
            && matches!(r.data.first(), Some(4 | 6))
        {
            return Some(PlainSignal::SessionLost);
        }
        None
    }

    /// The command in flight goes back to the head of the queue, to be sent again on a new
    /// session; a poll is simply dropped (the next one comes anyway).
    fn requeue_inflight(&mut self) {
        if let Some(f) = self.inflight.take() {
            if f.code != code::POLL {
                self.queue.push_front(Queued {
                    code: f.code,
                    data: f.data,
                    cmd: f.cmd,
                });
            }
        }
    }

    pub fn bytes(&mut self, data: &[u8], now: Instant) -> Step {
        let mut step = Step::default();
        self.decoder.push(data);
        while let Some(packet) = self.decoder.next_packet() {
            match packet {
                Ok(p) => self.packet(&p, now, &mut step),
                Err(FrameError::Crc) => self.counters.crc_errors += 1,
                Err(FrameError::Length) => self.counters.length_errors += 1,
            }
        }
        step
    }

    fn packet(&mut self, packet: &[u8], now: Instant, step: &mut Step) {
        let Some(f) = &self.inflight else {
            return;
        };
        let expected_seq = self.seq;
        let sent_code = f.code;
        match self.plain_signal(packet, expected_seq) {
            Some(PlainSignal::Busy) => {
                // The same command, data included, with the same sequence number, after the
                // reader's pause: a BUSY reader carried out nothing (OSDP 2.2; libosdp's
                // control panel does the same). It comes in the clear even on Secure Channel,
                // so it is recognised before the session would refuse it.
                self.counters.frames += 1;
                self.last_valid = now;
                self.held = self.inflight.take().map(|f| (f, now + self.s.busy_wait));
                return;
            }
            Some(PlainSignal::SessionLost) => {
                // The reader is there but dropped the session: a reply of ours was lost, so
                // our repeat carried the MAC of the step before, and the reader (libosdp does
                // this) refused it and left Secure Channel. A new handshake, with the reader
                // kept online and the refused command sent again on the new session.
                self.counters.frames += 1;
                self.last_valid = now;
                t::OsdpNak {
                    command: sent_code,
                    nak: 6,
                }
                .emit();
                self.requeue_inflight();
                self.session = None;
                self.decoder.clear();
                // Sequence number 0 starts the reader's count over as well.
                self.seq = 0;
                self.challenge(now, step);
                return;
            }
            None => {}
        }
        let secured = matches!(self.phase, Phase::Online | Phase::Keyset) && self.session.is_some();
        let reply = match parse_reply(packet, if secured { self.session.as_mut() } else { None }) {
            Ok(r) => r,
            Err(ReplyError::NotReply) => return,
            Err(error) => {
                self.counters.sc_failures += 1;
                t::OsdpReplyRefused { error: &error }.emit();
                self.fail_link(now, step);
                return;
            }
        };
        if reply.address != self.s.address || reply.seq != expected_seq {
            return;
        }
        self.counters.frames += 1;
        self.last_valid = now;
        let Some(f) = self.inflight.take() else {
            return;
        };
        self.next_seq();
        if reply.code == code::NAK {
            self.counters.naks += 1;
            let reason = reply.data.first().copied().unwrap_or(0);
            if f.code == code::ISTAT {
                // A reader that does not monitor its inputs: its door has no contact.
                t::OsdpNoInputStatus {
                    address: self.s.address,
                    nak: reason,
                }
                .emit();
            }
            if let Some(cmd) = f.cmd {
                step.happened.push(Happening::Done {
                    cmd,
                    result: Err(SerialFailure::Nak(reason)),
                });
            }
            // NAK 4 (sequence) and 6 (Secure Channel condition) mean the link state is lost;
            // a NAK during the handshake means the reader will not go further.
            if matches!(reason, 4 | 6) || self.phase != Phase::Online {
                t::OsdpNak {
                    command: sent_code,
                    nak: reason,
                }
                .emit();
                self.fail_link(now, step);
            }
            return;
        }
        match self.phase {
            Phase::Id if reply.code == code::PDID => {
                self.send(code::CAP, vec![0], None, None, now, step);
                self.phase = Phase::Cap;
            }
            Phase::Cap if reply.code == code::PDCAP => {
                let Some(scbk) = self.s.scbk else {
                    self.link_up(now, step);
                    return;
                };
                // Function 9 is communication security; compliance 0 means none.
                let sc_capable = reply.data.chunks_exact(3).any(|c| c[0] == 9 && c[1] >= 1);
                if !sc_capable {
                    t::OsdpNoSecureChannel {}.emit();
                    self.counters.sc_failures += 1;
                    self.fail_link(now, step);
                    return;
                }
                let _ = scbk;
                self.challenge(now, step);
            }
            Phase::Challenge if reply.code == code::CCRYPT => {
                let Some(scbk) = self.s.scbk else { return };
                let key = if self.default_key { SCBK_D } else { scbk };
                let session = Session::new(&key, self.cp_random);
                let (Some(pd_random), Some(client)) = (
                    reply
                        .data
                        .get(8..16)
                        .and_then(|s| <[u8; 8]>::try_from(s).ok()),
                    reply
                        .data
                        .get(16..32)
                        .and_then(|s| <Block>::try_from(s).ok()),
                ) else {
                    self.counters.sc_failures += 1;
                    self.fail_link(now, step);
                    return;
                };
                match session.server_cryptogram(&pd_random, &client) {
                    Ok(server) => {
                        self.session = Some(session);
                        self.phase = Phase::Crypt(server);
                        self.send(
                            code::SCRYPT,
                            server.to_vec(),
                            None,
                            Some(vec![3, 0x13, u8::from(!self.default_key)]),
                            now,
                            step,
                        );
                    }
                    Err(error) => {
                        self.counters.sc_failures += 1;
                        t::OsdpHandshakeFailed { error: &error }.emit();
                        self.fail_link(now, step);
                    }
                }
            }
            Phase::Crypt(server) if reply.code == code::RMAC_I => {
                let rmac = reply.data.get(..16).and_then(|s| <Block>::try_from(s).ok());
                let accepted = match (self.session.as_mut(), rmac) {
                    (Some(s), Some(r)) => s.accept_rmac_i(&server, &r).is_ok(),
                    _ => false,
                };
                if accepted {
                    self.link_up(now, step);
                } else {
                    self.counters.sc_failures += 1;
                    t::OsdpRmacMismatch {}.emit();
                    self.fail_link(now, step);
                }
            }
            Phase::Keyset if reply.code == code::ACK => {
                // The reader has its key: start over on it.
                self.provisioned = true;
                self.default_key = false;
                t::OsdpProvisioned {
                    address: self.s.address,
                }
                .emit();
                let restarted = self.restart(now);
                step.send.extend(restarted.send);
                step.happened.extend(restarted.happened);
            }
            Phase::Online => {
                match reply.code {
                    code::KEYPAD => self.keypad(&reply.data, now, step),
                    code::ISTATR => self.inputs(&reply.data, step),
                    code::RAW => self.card(&reply.data, step),
                    code::FMT => {
                        // reader, direction, length, characters: the card as the reader
                        // formatted it, taken as given.
                        let chars = reply.data.get(3..).unwrap_or(&[]);
                        let len = usize::from(reply.data.get(2).copied().unwrap_or(0));
                        let text = String::from_utf8_lossy(&chars[..len.min(chars.len())]);
                        let text = text.trim();
                        if !text.is_empty() {
                            step.happened.push(Happening::Credential {
                                kind: CredentialKind::Card,
                                value: text.to_owned(),
                            });
                        }
                    }
                    _ => {}
                }
                if let Some(cmd) = f.cmd {
                    // An OUT answered with the output's status (osdp_OSTATR) was carried out.
                    let done = reply.code == code::ACK
                        || (f.code == code::OUT && reply.code == code::OSTATR);
                    let result = if done {
                        Ok(())
                    } else {
                        Err(SerialFailure::UnexpectedReply(reply.code))
                    };
                    step.happened.push(Happening::Done { cmd, result });
                }
                self.pump(now, step);
            }
            // A reply that does not fit the phase: the reader is out of step.
            _ => self.fail_link(now, step),
        }
    }

    /// osdp_ISTATR: the door contact's input, reported when it changed (or first read).
    fn inputs(&mut self, data: &[u8], step: &mut Step) {
        let Some(active) = self.s.contact_input.and_then(|n| data.get(usize::from(n))) else {
            return;
        };
        let closed = *active == 0;
        if self.contact != Some(closed) {
            self.contact = Some(closed);
            step.happened.push(Happening::Contact { closed });
        }
    }

    /// Starts the Secure Channel handshake: osdp_CHLNG with a new random number.
    fn challenge(&mut self, now: Instant, step: &mut Step) {
        self.cp_random = (self.random)();
        self.phase = Phase::Challenge;
        // SCB data: 1 = the reader's own key (SCBK), 0 = the default key (SCBK-D).
        let key_byte = u8::from(!self.default_key);
        self.send(
            code::CHLNG,
            self.cp_random.to_vec(),
            None,
            Some(vec![3, 0x11, key_byte]),
            now,
            step,
        );
    }

    fn link_up(&mut self, now: Instant, step: &mut Step) {
        if self.default_key {
            // A session on SCBK-D is only for this: give the reader its key (encrypted).
            if let Some(scbk) = self.s.scbk {
                self.phase = Phase::Keyset;
                let mut data = vec![1, 16];
                data.extend_from_slice(&scbk);
                self.send(code::KEYSET, data, None, None, now, step);
                return;
            }
        }
        self.phase = Phase::Online;
        self.next_poll = now;
        if self.s.contact_input.is_some() {
            // What the door is now: it may have changed while the link was down.
            self.contact = None;
            self.queue.push_front(Queued {
                code: code::ISTAT,
                data: Vec::new(),
                cmd: None,
            });
        }
        if !self.online {
            self.online = true;
            step.happened
                .push(Happening::Online(if self.linked_since_open {
                    LinkReason::PollReply
                } else {
                    LinkReason::PortOpened
                }));
        }
        self.linked_since_open = true;
        self.pump(now, step);
    }

    /// The link is lost (silence, a refused handshake, a bad MAC): offline, fail what waits,
    /// start over after `retry_wait`.
    fn fail_link(&mut self, now: Instant, step: &mut Step) {
        // A handshake refused on the reader's own key may be a new reader still on SCBK-D:
        // with `install_scbk` the next attempt tries that key, and the one after goes back.
        let handshake = matches!(
            self.phase,
            Phase::Challenge | Phase::Crypt(_) | Phase::Keyset
        );
        if handshake && self.s.install_scbk && !self.provisioned {
            self.default_key = !self.default_key;
        }
        self.fail_all(SerialFailure::DeviceOffline, step);
        self.session = None;
        self.decoder.clear();
        self.phase = Phase::Waiting(now + self.s.retry_wait);
        if self.online {
            self.online = false;
            step.happened
                .push(Happening::Offline(LinkReason::PollTimeout));
        }
    }

    /// An `osdp_RAW` card read (reader, format, bit count LE, data), decoded by the reader's
    /// card format; a read that is not a card of it (parity, length) is refused and counted.
    fn card(&mut self, data: &[u8], step: &mut Step) {
        let bits = u16::from_le_bytes([
            data.get(2).copied().unwrap_or(0),
            data.get(3).copied().unwrap_or(0),
        ]);
        let card = data.get(4..).unwrap_or(&[]);
        match super::cards::decode(self.s.card_format, bits, card) {
            Ok(value) => step.happened.push(Happening::Credential {
                kind: CredentialKind::Card,
                value,
            }),
            Err(error) => step.happened.push(Happening::CardUnreadable {
                error: error.to_string(),
            }),
        }
    }

    fn keypad(&mut self, data: &[u8], now: Instant, step: &mut Step) {
        // reader, count, keys. OSDP sends `#` as 0x0D and `*` as 0x7F; some readers send ASCII.
        let count = usize::from(data.get(1).copied().unwrap_or(0));
        let keys = data.get(2..).unwrap_or(&[]);
        for &k in keys.iter().take(count) {
            match k {
                b'0'..=b'9' => {
                    if self.pin.len() < MAX_PIN {
                        self.pin.push(char::from(k));
                    }
                    self.pin_at = Some(now);
                }
                b'#' | 0x0D => {
                    if !self.pin.is_empty() {
                        step.happened.push(Happening::Credential {
                            kind: CredentialKind::Pin,
                            value: std::mem::take(&mut self.pin),
                        });
                    }
                    self.pin_at = None;
                }
                b'*' | 0x7F => {
                    self.pin.clear();
                    self.pin_at = None;
                }
                _ => {}
            }
        }
    }

    fn pump(&mut self, now: Instant, step: &mut Step) {
        if self.inflight.is_some() {
            return;
        }
        if let Some((_, at)) = &self.held {
            if now < *at {
                return;
            }
            if let Some((mut f, _)) = self.held.take() {
                f.deadline = now + self.s.reply_timeout;
                step.send.push(f.packet.clone());
                self.inflight = Some(f);
            }
            return;
        }
        if self.phase != Phase::Online {
            return;
        }
        if let Some(q) = self.queue.pop_front() {
            self.send(q.code, q.data, q.cmd, None, now, step);
        } else if now >= self.next_poll {
            self.next_poll = now + self.s.poll_every;
            self.send(code::POLL, Vec::new(), None, None, now, step);
        }
    }

    pub fn tick(&mut self, now: Instant) -> Step {
        let mut step = Step::default();
        if self
            .pin_at
            .is_some_and(|t| now.saturating_duration_since(t) >= PIN_TIMEOUT)
        {
            self.pin.clear();
            self.pin_at = None;
        }
        if let Phase::Waiting(until) = self.phase {
            if now >= until {
                return self.restart(now);
            }
            return step;
        }
        let silent = now.saturating_duration_since(self.last_valid) >= self.s.offline_after;
        if let Some(f) = &mut self.inflight {
            if now >= f.deadline {
                if silent {
                    self.fail_link(now, &mut step);
                } else {
                    // OSDP: a retry repeats the packet with the same sequence number, until
                    // the reader has been silent for `offline_after`.
                    f.deadline = now + self.s.reply_timeout;
                    self.decoder.clear();
                    step.send.push(f.packet.clone());
                }
                return step;
            }
        }
        self.pump(now, &mut step);
        step
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        let phase = match self.phase {
            Phase::Waiting(t) => Some(t),
            Phase::Online if self.inflight.is_none() && self.held.is_none() => Some(self.next_poll),
            _ => None,
        };
        [
            phase,
            self.inflight.as_ref().map(|f| f.deadline),
            self.held.as_ref().map(|(_, at)| *at),
            self.pin_at.map(|t| t + PIN_TIMEOUT),
        ]
        .into_iter()
        .flatten()
        .min()
    }
}

#[cfg(test)]
mod tests;
