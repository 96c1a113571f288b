//! Modbus RTU for relay boards that drive door strikes.
//!
//! Three layers, none of which touches a port: the frames ZenEdge sends (FC01 read coils,
//! FC05 write single coil, and the Waveshare "flash" write), [`parse`] for the answers, and
//! [`Relay`], the state machine of one board: commands, liveness polls, timeouts and retries go
//! in, bytes to send and what happened come out. `serial::run_port` is the thin shell.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::types::{Cmd, Happening, LinkReason, SerialFailure, Step};

/// Longest Modbus RTU frame (the spec's 256-byte ADU). The decoder never holds more.
pub const MAX_FRAME: usize = 256;

const READ_COILS: u8 = 0x01;
const READ_INPUTS: u8 = 0x02;
const WRITE_COIL: u8 = 0x05;
/// Waveshare relay boards: FC05 at this address + coil pulses the coil for `value` × 100 ms,
/// timed by the board.
const FLASH_BASE: u16 = 0x0200;

/// CRC-16/MODBUS (reflected 0x8005, init 0xFFFF), sent low byte first.
pub fn crc16(data: &[u8]) -> u16 {
    let mut crc: u16 = 0xFFFF;
    for &b in data {
        crc ^= u16::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xA001
            } else {
                crc >> 1
            };
        }
    }
    crc
}

fn frame(address: u8, function: u8, a: u16, b: u16) -> Vec<u8> {
    let mut f = vec![address, function];
    f.extend_from_slice(&a.to_be_bytes());
    f.extend_from_slice(&b.to_be_bytes());
    let crc = crc16(&f);
    f.extend_from_slice(&crc.to_le_bytes());
    f
}

/// FC01: read `count` coils from `start`.
pub fn read_coils(address: u8, start: u16, count: u16) -> Vec<u8> {
    frame(address, READ_COILS, start, count)
}

/// FC02: read `count` discrete inputs from `start`.
pub fn read_inputs(address: u8, start: u16, count: u16) -> Vec<u8> {
    frame(address, READ_INPUTS, start, count)
}

/// FC05: switch one coil on (0xFF00) or off (0x0000).
pub fn write_coil(address: u8, coil: u16, on: bool) -> Vec<u8> {
    frame(address, WRITE_COIL, coil, if on { 0xFF00 } else { 0x0000 })
}

/// The board-timed pulse: FC05 at 0x0200 + coil, value in 100 ms units.
pub fn flash(address: u8, coil: u16, tenths: u16) -> Vec<u8> {
    frame(address, WRITE_COIL, FLASH_BASE.wrapping_add(coil), tenths)
}

/// An answer from the board.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    /// FC01 / FC02: the coil or input bits, least significant first.
    Coils(Vec<u8>),
    /// FC05 echo: the address and value written.
    Wrote { address: u16, value: u16 },
    /// The board refused (function | 0x80): its exception code.
    Exception { function: u8, code: u8 },
}

/// What [`parse`] found at the start of a buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parse {
    /// Not enough bytes yet for the frame that starts here.
    Incomplete,
    /// A valid frame of `len` bytes.
    Frame { response: Response, len: usize },
    /// The first byte cannot start a valid answer (noise, a CRC error, another slave's
    /// frame): skip it and look again.
    Skip,
}

/// Parses the answer to a request with `function` to slave `address` at the start of `buf`.
/// Pure and total: any bytes give one of the three outcomes, and `Skip` always makes progress.
pub fn parse(buf: &[u8], address: u8, function: u8) -> Parse {
    let (Some(&addr), Some(&fc)) = (buf.first(), buf.get(1)) else {
        return match buf.first() {
            Some(&a) if a != address => Parse::Skip,
            _ => Parse::Incomplete,
        };
    };
    if addr != address {
        return Parse::Skip;
    }
    let len = if fc == function | 0x80 {
        5
    } else if fc == function && matches!(function, READ_COILS | READ_INPUTS) {
        match buf.get(2) {
            Some(&n) => 5 + usize::from(n),
            None => return Parse::Incomplete,
        }
    } else if fc == function && function == WRITE_COIL {
        8
    } else {
        return Parse::Skip;
    };
    let Some(frame) = buf.get(..len) else {
        return Parse::Incomplete;
    };
    let body = &frame[..len - 2];
    let crc = u16::from_le_bytes([frame[len - 2], frame[len - 1]]);
    if crc16(body) != crc {
        return Parse::Skip;
    }
    let response = if fc & 0x80 != 0 {
        Response::Exception {
            function,
            code: body[2],
        }
    } else if matches!(fc, READ_COILS | READ_INPUTS) {
        Response::Coils(body[3..].to_vec())
    } else {
        Response::Wrote {
            address: u16::from_be_bytes([body[2], body[3]]),
            value: u16::from_be_bytes([body[4], body[5]]),
        }
    };
    Parse::Frame { response, len }
}

/// What one machine reads and drives on a board.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Point {
    /// A coil (a relay driving a strike): written, and read back (FC01) as the poll.
    Coil,
    /// A discrete input (a door contact), read (FC02) as the poll; `closed_when_on`: the
    /// input's state when the door is shut.
    Input { closed_when_on: bool },
}

/// The fixed settings of one board.
#[derive(Debug, Clone)]
pub struct RelaySettings {
    pub address: u8,
    /// The coil, or the input of a [`Point::Input`].
    pub coil: u16,
    pub point: Point,
    pub pulse: Duration,
    /// The board times the pulse itself (Waveshare flash).
    pub flash: bool,
    /// How long to wait for each answer.
    pub request_timeout: Duration,
    /// How often to read the coils when idle (the liveness poll).
    pub poll_every: Duration,
    /// No answer for this long ⇒ offline (`poll_timeout`).
    pub offline_after: Duration,
}

impl RelaySettings {
    pub fn new(address: u8, coil: u16, pulse: Duration, flash: bool) -> RelaySettings {
        RelaySettings {
            address,
            coil,
            point: Point::Coil,
            pulse,
            flash,
            request_timeout: Duration::from_millis(300),
            poll_every: Duration::from_secs(1),
            offline_after: Duration::from_secs(3),
        }
    }

    /// A door contact on discrete input `input`: read four times a second, so an opening is
    /// reported well within a second (DESIGN §3: `door.forced_open` within 1 s).
    pub fn input(address: u8, input: u16, closed_when_on: bool) -> RelaySettings {
        RelaySettings {
            point: Point::Input { closed_when_on },
            poll_every: INPUT_POLL,
            ..RelaySettings::new(address, input, Duration::ZERO, false)
        }
    }

    fn is_input(&self) -> bool {
        matches!(self.point, Point::Input { .. })
    }
}

/// How often a door contact on a discrete input is read.
pub const INPUT_POLL: Duration = Duration::from_millis(250);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Poll,
    /// ON or OFF; `cmd` is the command it carries out, if any (the OFF that ends a pulse, or
    /// the OFF on open and on shutdown, carry none).
    Write {
        on: bool,
        cmd: Option<Cmd>,
    },
    Flash {
        cmd: Cmd,
    },
}

struct InFlight {
    op: Op,
    frame: Vec<u8>,
    deadline: Instant,
    tries: u8,
}

/// Attempts per request: the first and two retries (FC01/FC05 are idempotent).
const TRIES: u8 = 3;

/// One relay board. Feed it with [`Relay::opened`], [`Relay::command`], [`Relay::bytes`] and
/// [`Relay::tick`]; each returns the bytes to write and what happened.
pub struct Relay {
    s: RelaySettings,
    buf: Vec<u8>,
    queue: VecDeque<Op>,
    inflight: Option<InFlight>,
    next_poll: Option<Instant>,
    last_reply: Option<Instant>,
    online: bool,
    answered_since_open: bool,
    /// When the software-timed pulse must end (boards without flash).
    off_at: Option<Instant>,
    /// The coil (or input) as last reported: the poll reports only a change.
    reported_on: Option<bool>,
    pub noise_bytes: u64,
}

impl Relay {
    pub fn new(s: RelaySettings) -> Relay {
        Relay {
            s,
            buf: Vec::new(),
            queue: VecDeque::new(),
            inflight: None,
            next_poll: None,
            last_reply: None,
            online: false,
            answered_since_open: false,
            off_at: None,
            reported_on: None,
            noise_bytes: 0,
        }
    }

    /// The port was (re)opened. A board without flash may have been left energised by a crash
    /// or an unplug mid-pulse: the first thing sent is OFF.
    pub fn opened(&mut self, now: Instant) -> Step {
        self.buf.clear();
        self.inflight = None;
        self.answered_since_open = false;
        self.reported_on = None;
        self.last_reply = Some(now);
        self.next_poll = Some(now);
        if !self.s.flash && !self.s.is_input() {
            self.queue.push_front(Op::Write {
                on: false,
                cmd: None,
            });
        }
        self.pump(now)
    }

    /// The port is gone: every waiting command fails, and the device is offline.
    pub fn closed(&mut self) -> Step {
        let mut step = Step::default();
        self.buf.clear();
        self.off_at = None;
        let ops = self.inflight.take().map(|f| f.op).into_iter();
        for op in ops.chain(self.queue.drain(..)) {
            if let Some(cmd) = op_cmd(op) {
                step.happened.push(Happening::Done {
                    cmd,
                    result: Err(SerialFailure::PortClosed),
                });
            }
        }
        if self.online {
            self.online = false;
            step.happened
                .push(Happening::Offline(LinkReason::PortClosed));
        }
        step
    }

    pub fn command(&mut self, cmd: Cmd, now: Instant) -> Step {
        let op = match cmd {
            // A board that times its own pulse cannot hold (passage mode leaves it alone).
            Cmd::Unlock { .. } | Cmd::Hold if self.s.flash => Op::Flash { cmd },
            Cmd::Unlock { .. } | Cmd::Hold => Op::Write {
                on: true,
                cmd: Some(cmd),
            },
            Cmd::Lock => Op::Write {
                on: false,
                cmd: Some(cmd),
            },
            // A relay has no LED or buzzer.
            Cmd::Feedback { .. } => return Step::default(),
        };
        // An input drives nothing (the hub sends a contact no command).
        if self.s.is_input() {
            return Step::default();
        }
        self.queue.push_back(op);
        self.pump(now)
    }

    /// Stopping: the coil of a board without flash is switched off before the port closes.
    pub fn shutdown(&mut self, now: Instant) -> Step {
        if self.s.flash || self.s.is_input() {
            return Step::default();
        }
        self.off_at = None;
        self.queue.push_front(Op::Write {
            on: false,
            cmd: None,
        });
        self.pump(now)
    }

    /// Whether a request is on the wire, waiting for its answer (a shared bus is not free).
    pub fn awaiting(&self) -> bool {
        self.inflight.is_some()
    }

    /// Whether nothing is waiting to be sent or answered (the shutdown OFF went out).
    pub fn idle(&self) -> bool {
        self.inflight.is_none() && self.queue.is_empty()
    }

    pub fn bytes(&mut self, data: &[u8], now: Instant) -> Step {
        self.buf.extend_from_slice(data);
        let mut step = Step::default();
        loop {
            let Some(f) = &self.inflight else {
                // Nothing asked: whatever arrives is noise.
                self.noise_bytes += self.buf.len() as u64;
                self.buf.clear();
                break;
            };
            let function = match f.op {
                Op::Poll if self.s.is_input() => READ_INPUTS,
                Op::Poll => READ_COILS,
                Op::Write { .. } | Op::Flash { .. } => WRITE_COIL,
            };
            match parse(&self.buf, self.s.address, function) {
                Parse::Incomplete => {
                    if self.buf.len() > MAX_FRAME {
                        self.noise_bytes += self.buf.len() as u64;
                        self.buf.clear();
                    }
                    break;
                }
                Parse::Skip => {
                    self.noise_bytes += 1;
                    self.buf.remove(0);
                }
                Parse::Frame { response, len } => {
                    self.buf.drain(..len);
                    self.answer(response, now, &mut step);
                }
            }
        }
        let more = self.pump(now);
        step.send.extend(more.send);
        step.happened.extend(more.happened);
        step
    }

    fn answer(&mut self, response: Response, now: Instant, step: &mut Step) {
        let Some(f) = self.inflight.take() else {
            return;
        };
        self.last_reply = Some(now);
        if !self.online {
            self.online = true;
            step.happened
                .push(Happening::Online(if self.answered_since_open {
                    LinkReason::PollReply
                } else {
                    LinkReason::PortOpened
                }));
        }
        self.answered_since_open = true;
        let result = match response {
            Response::Exception { code, .. } => Err(SerialFailure::ModbusException(code)),
            Response::Coils(bits) => {
                let on = bits
                    .first()
                    .is_some_and(|b| b & (1 << (self.s.coil % 8)) != 0);
                self.report_coil(on, step);
                Ok(())
            }
            Response::Wrote { .. } => Ok(()),
        };
        match f.op {
            Op::Poll => {}
            Op::Write { on, cmd } => {
                if result.is_ok() {
                    self.report_coil(on, step);
                    if let (true, Some(Cmd::Unlock { pulse })) = (on, cmd) {
                        // A pulse too long for the clock (never from a valid config or
                        // command) ends at once rather than never.
                        self.off_at = Some(
                            now.checked_add(pulse.unwrap_or(self.s.pulse))
                                .unwrap_or(now),
                        );
                    }
                    if !on {
                        self.off_at = None;
                    }
                }
                if let Some(cmd) = cmd {
                    step.happened.push(Happening::Done { cmd, result });
                }
            }
            Op::Flash { cmd } => step.happened.push(Happening::Done { cmd, result }),
        }
    }

    fn report_coil(&mut self, on: bool, step: &mut Step) {
        if self.reported_on != Some(on) {
            self.reported_on = Some(on);
            step.happened.push(match self.s.point {
                Point::Coil => Happening::Relay { on },
                Point::Input { closed_when_on } => Happening::Contact {
                    closed: on == closed_when_on,
                },
            });
        }
    }

    pub fn tick(&mut self, now: Instant) -> Step {
        let mut step = Step::default();
        if let Some(f) = &mut self.inflight {
            if now >= f.deadline {
                if f.tries < TRIES {
                    // Retry the same frame; the stale bytes of a late answer are dropped.
                    f.tries += 1;
                    f.deadline = now + self.s.request_timeout;
                    self.buf.clear();
                    step.send.push(f.frame.clone());
                } else {
                    let op = f.op;
                    self.inflight = None;
                    if let Some(cmd) = op_cmd(op) {
                        step.happened.push(Happening::Done {
                            cmd,
                            result: Err(SerialFailure::Timeout),
                        });
                    }
                }
            }
        }
        if self.off_at.is_some_and(|t| now >= t) {
            self.off_at = None;
            self.queue.push_front(Op::Write {
                on: false,
                cmd: None,
            });
        }
        if self.online
            && self
                .last_reply
                .is_some_and(|t| now.saturating_duration_since(t) >= self.s.offline_after)
        {
            self.online = false;
            step.happened
                .push(Happening::Offline(LinkReason::PollTimeout));
        }
        let more = self.pump(now);
        step.send.extend(more.send);
        step.happened.extend(more.happened);
        step
    }

    /// Sends the next request when none is in flight: a queued command first, else a poll
    /// when one is due.
    fn pump(&mut self, now: Instant) -> Step {
        let mut step = Step::default();
        if self.inflight.is_some() {
            return step;
        }
        let op = match self.queue.pop_front() {
            Some(op) => op,
            None if self.next_poll.is_some_and(|t| now >= t) => Op::Poll,
            None => return step,
        };
        let a = self.s.address;
        let frame = match op {
            Op::Poll if self.s.is_input() => read_inputs(a, self.s.coil - self.s.coil % 8, 8),
            Op::Poll => read_coils(a, self.s.coil - self.s.coil % 8, 8),
            Op::Write { on, .. } => write_coil(a, self.s.coil, on),
            Op::Flash { cmd } => {
                let pulse = match cmd {
                    Cmd::Unlock { pulse: Some(p) } => p,
                    _ => self.s.pulse,
                };
                flash(a, self.s.coil, pulse_tenths(pulse))
            }
        };
        if op == Op::Poll {
            self.next_poll = Some(now + self.s.poll_every);
        }
        self.inflight = Some(InFlight {
            op,
            frame: frame.clone(),
            deadline: now + self.s.request_timeout,
            tries: 1,
        });
        step.send.push(frame);
        step
    }

    /// When [`Relay::tick`] next has something to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        [
            self.inflight.as_ref().map(|f| f.deadline),
            self.off_at,
            if self.inflight.is_none() {
                self.next_poll
            } else {
                None
            },
            self.last_reply
                .filter(|_| self.online)
                .map(|t| t + self.s.offline_after),
        ]
        .into_iter()
        .flatten()
        .min()
    }
}

fn op_cmd(op: Op) -> Option<Cmd> {
    match op {
        Op::Poll => None,
        Op::Write { cmd, .. } => cmd,
        Op::Flash { cmd } => Some(cmd),
    }
}

/// The pulse in the board's 100 ms units, at least one.
fn pulse_tenths(pulse: Duration) -> u16 {
    u16::try_from(pulse.as_millis().div_ceil(100))
        .unwrap_or(u16::MAX)
        .max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_match_published_vectors() {
        // Modbus application protocol examples and the Waveshare relay manual.
        assert_eq!(
            read_coils(1, 0, 8),
            [0x01, 0x01, 0x00, 0x00, 0x00, 0x08, 0x3D, 0xCC]
        );
        assert_eq!(
            write_coil(1, 0, true),
            [0x01, 0x05, 0x00, 0x00, 0xFF, 0x00, 0x8C, 0x3A]
        );
        assert_eq!(
            write_coil(1, 0, false),
            [0x01, 0x05, 0x00, 0x00, 0x00, 0x00, 0xCD, 0xCA]
        );
        // Waveshare: "relay 0 flash on, 700 ms".
        assert_eq!(
            flash(1, 0, 7),
            [0x01, 0x05, 0x02, 0x00, 0x00, 0x07, 0x8D, 0xB0]
        );
        assert_eq!(crc16(b"123456789"), 0x4B37);
    }

    #[test]
    fn parse_finds_frames_and_skips_everything_else() {
        let echo = write_coil(1, 0, true);
        assert_eq!(
            parse(&echo, 1, WRITE_COIL),
            Parse::Frame {
                response: Response::Wrote {
                    address: 0,
                    value: 0xFF00
                },
                len: 8
            }
        );
        assert_eq!(parse(&echo[..5], 1, WRITE_COIL), Parse::Incomplete);
        let mut bad = echo.clone();
        bad[7] ^= 1;
        assert_eq!(parse(&bad, 1, WRITE_COIL), Parse::Skip);
        assert_eq!(parse(&echo, 2, WRITE_COIL), Parse::Skip);
        let mut coils = vec![1, 1, 1, 0b0000_0100];
        let crc = crc16(&coils);
        coils.extend_from_slice(&crc.to_le_bytes());
        assert_eq!(
            parse(&coils, 1, READ_COILS),
            Parse::Frame {
                response: Response::Coils(vec![4]),
                len: 6
            }
        );
        let mut exc = vec![1, 0x85, 0x02];
        let crc = crc16(&exc);
        exc.extend_from_slice(&crc.to_le_bytes());
        assert_eq!(
            parse(&exc, 1, WRITE_COIL),
            Parse::Frame {
                response: Response::Exception {
                    function: WRITE_COIL,
                    code: 2
                },
                len: 5
            }
        );
    }

    #[test]
    fn parse_is_total_on_every_short_buffer() {
        for a in 0..=255u8 {
            for b in [0u8, 1, 5, 0x81, 0x85, 0xFF] {
                for n in [0usize, 1, 2, 3, 200, 255] {
                    let mut buf = vec![a, b];
                    buf.resize(n.min(2) + n, 0x11);
                    let _ = parse(&buf, 1, READ_COILS);
                    let _ = parse(&buf, 1, WRITE_COIL);
                }
            }
        }
    }

    /// A board simulator answering every request after `delay`.
    fn answer(frame: &[u8]) -> Vec<u8> {
        if frame[1] == READ_COILS {
            let mut r = vec![frame[0], 1, 1, 0];
            let crc = crc16(&r);
            r.extend_from_slice(&crc.to_le_bytes());
            r
        } else {
            frame.to_vec()
        }
    }

    fn settings(flash: bool) -> RelaySettings {
        RelaySettings::new(1, 3, Duration::from_secs(5), flash)
    }

    /// The answer to an FC02 read whose byte of inputs is `bits`.
    fn inputs(address: u8, bits: u8) -> Vec<u8> {
        let mut r = vec![address, READ_INPUTS, 1, bits];
        let crc = crc16(&r);
        r.extend_from_slice(&crc.to_le_bytes());
        r
    }

    #[test]
    fn a_door_contact_on_a_discrete_input_is_read_four_times_a_second_and_reports_changes() {
        let t0 = Instant::now();
        // Input 10 (bit 2 of the byte read from 8), closed when the input is off.
        let mut r = Relay::new(RelaySettings::input(2, 10, false));
        // No OFF write: an input drives nothing; the first thing sent is the FC02 read.
        let s = r.opened(t0);
        assert_eq!(s.send, vec![read_inputs(2, 8, 8)]);
        // The Modbus specification's FC02 example: inputs 197–218 of slave 17.
        assert_eq!(
            read_inputs(0x11, 0xC4, 0x16),
            [0x11, 0x02, 0x00, 0xC4, 0x00, 0x16, 0xBA, 0xA9]
        );
        let s = r.bytes(&inputs(2, 0b0000_0000), t0);
        assert_eq!(
            s.happened,
            [
                Happening::Online(LinkReason::PortOpened),
                Happening::Contact { closed: true }
            ]
        );
        // A command is not for an input.
        assert_eq!(r.command(Cmd::Unlock { pulse: None }, t0), Step::default());
        // The next read 250 ms later; the same state says nothing, a change says it once.
        assert!(r.tick(t0 + Duration::from_millis(249)).send.is_empty());
        let t = t0 + INPUT_POLL;
        assert_eq!(r.tick(t).send, vec![read_inputs(2, 8, 8)]);
        assert!(r.bytes(&inputs(2, 0b1111_1011), t).happened.is_empty());
        let t = t + INPUT_POLL;
        r.tick(t);
        assert_eq!(
            r.bytes(&inputs(2, 0b0000_0100), t).happened,
            [Happening::Contact { closed: false }]
        );
        // Noise and a coil answer are not an input's answer.
        let t = t + INPUT_POLL;
        r.tick(t);
        let coils = {
            let mut f = vec![2, READ_COILS, 1, 0];
            let crc = crc16(&f);
            f.extend_from_slice(&crc.to_le_bytes());
            f
        };
        assert!(r.bytes(&coils, t).happened.is_empty());
        assert!(r.bytes(&[0xff, 0x00, 0x13], t).happened.is_empty());
        // Stopping drives nothing either.
        assert!(r.shutdown(t).send.is_empty());
    }

    #[test]
    fn unlock_without_flash_is_on_then_off_after_the_pulse() {
        let t0 = Instant::now();
        let mut r = Relay::new(settings(false));
        let s = r.opened(t0);
        // OFF first: a crash may have left the coil on.
        assert_eq!(s.send, vec![write_coil(1, 3, false)]);
        let s = r.bytes(&answer(&s.send[0]), t0);
        assert_eq!(s.happened[0], Happening::Online(LinkReason::PortOpened));
        // The poll that was due goes out next.
        assert_eq!(s.send, vec![read_coils(1, 0, 8)]);
        let s = r.bytes(&answer(&s.send[0]), t0);
        assert!(s.send.is_empty());
        let s = r.command(Cmd::Unlock { pulse: None }, t0);
        assert_eq!(s.send, vec![write_coil(1, 3, true)]);
        let s = r.bytes(&answer(&s.send[0]), t0);
        assert!(s.happened.contains(&Happening::Done {
            cmd: Cmd::Unlock { pulse: None },
            result: Ok(())
        }));
        assert!(r
            .tick(t0 + Duration::from_millis(4_999))
            .send
            .iter()
            .all(|f| f[1] == READ_COILS || f.is_empty()));
        // Answer any poll so only the OFF matters.
        let mut t = t0 + Duration::from_millis(4_999);
        if let Some(f) = &r.inflight {
            let frame = f.frame.clone();
            r.bytes(&answer(&frame), t);
        }
        t += Duration::from_millis(1);
        let s = r.tick(t);
        assert_eq!(s.send, vec![write_coil(1, 3, false)]);
    }

    #[test]
    fn unlock_with_flash_is_one_board_timed_write() {
        let t0 = Instant::now();
        let mut r = Relay::new(settings(true));
        let s = r.opened(t0);
        assert_eq!(s.send, vec![read_coils(1, 0, 8)]);
        r.bytes(&answer(&s.send[0]), t0);
        let s = r.command(Cmd::Unlock { pulse: None }, t0);
        assert_eq!(s.send, vec![flash(1, 3, 50)]);
        let s = r.bytes(&answer(&s.send[0]), t0);
        assert_eq!(
            s.happened,
            vec![Happening::Done {
                cmd: Cmd::Unlock { pulse: None },
                result: Ok(())
            }]
        );
        assert!(r.off_at.is_none());
        assert!(r.shutdown(t0).send.is_empty());
        // An access.unlock's duration_s overrides the configured pulse.
        let s = r.command(
            Cmd::Unlock {
                pulse: Some(Duration::from_secs(2)),
            },
            t0,
        );
        assert_eq!(s.send, vec![flash(1, 3, 20)]);
    }

    #[test]
    fn silence_retries_then_fails_then_goes_offline_and_back() {
        let t0 = Instant::now();
        let mut r = Relay::new(settings(true));
        let s = r.opened(t0);
        r.bytes(&answer(&s.send[0]), t0);
        let s = r.command(Cmd::Unlock { pulse: None }, t0);
        let frame = s.send[0].clone();
        let ms = |n| t0 + Duration::from_millis(n);
        assert_eq!(r.tick(ms(300)).send, vec![frame.clone()]);
        assert_eq!(r.tick(ms(600)).send, vec![frame.clone()]);
        let s = r.tick(ms(900));
        assert_eq!(
            s.happened,
            vec![Happening::Done {
                cmd: Cmd::Unlock { pulse: None },
                result: Err(SerialFailure::Timeout)
            }]
        );
        let mut offline_at = None;
        let mut t = 900;
        while t < 10_000 {
            t += 100;
            let s = r.tick(ms(t));
            if s.happened
                .contains(&Happening::Offline(LinkReason::PollTimeout))
            {
                offline_at = Some(t);
                break;
            }
        }
        assert_eq!(offline_at, Some(3_000));
        let poll = r
            .inflight
            .as_ref()
            .map(|f| f.frame.clone())
            .unwrap_or_default();
        let s = r.bytes(&answer(&poll), ms(3_050));
        assert_eq!(s.happened[0], Happening::Online(LinkReason::PollReply));
    }

    #[test]
    fn noise_and_partial_frames_resynchronise() {
        let t0 = Instant::now();
        let mut r = Relay::new(settings(true));
        let s = r.opened(t0);
        let reply = answer(&s.send[0]);
        let mut noisy = vec![0xFF, 0x00, 0x01, 0x99];
        noisy.extend_from_slice(&reply[..3]);
        assert!(r.bytes(&noisy, t0).happened.is_empty());
        let s = r.bytes(&reply[3..], t0);
        assert_eq!(s.happened[0], Happening::Online(LinkReason::PortOpened));
        assert!(r.noise_bytes >= 3);
        // Unasked bytes are noise and never buffered.
        let s = r.bytes(&[0x55; 1000], t0);
        assert!(s.happened.is_empty());
        assert!(r.buf.len() <= MAX_FRAME);
    }

    #[test]
    fn closing_fails_waiting_commands_once() {
        let t0 = Instant::now();
        let mut r = Relay::new(settings(false));
        let s = r.opened(t0);
        r.bytes(&answer(&s.send[0]), t0);
        r.command(Cmd::Unlock { pulse: None }, t0);
        let s = r.closed();
        assert!(s.happened.contains(&Happening::Done {
            cmd: Cmd::Unlock { pulse: None },
            result: Err(SerialFailure::PortClosed)
        }));
        assert!(s
            .happened
            .contains(&Happening::Offline(LinkReason::PortClosed)));
        assert!(r.closed().happened.is_empty());
    }
}
