//! Several devices on one serial port, as RS-485 is wired in real buildings (DESIGN section 4):
//! OSDP readers at their addresses on one multi-drop bus, Modbus coils and boards on one line.
//!
//! The bus is half duplex: one request may be on the wire at a time, and its answer must come
//! before the next request goes out. [`Bus`] holds each device's machine and gives the line to
//! one of them at a time: the owner is the machine whose request awaits its answer; bytes go to
//! it; when it has its answer (or gave up), the others get their turn, in order, so a chatty
//! device cannot starve the rest. A machine that has nothing to send is ticked in its turn (its
//! timers, its polls). Opening the port, commands and the stop reach each machine in its turn
//! too, so that no two of them ever write at once. Pure, like the machines.

use std::collections::VecDeque;
use std::time::Instant;

use super::{Cmd, Happening, Machine, SerialFailure};

struct Member {
    machine: Machine,
    /// The port opened and this machine has not been told yet.
    open: bool,
    /// The daemon stops and this machine has not been told yet.
    stop: bool,
    /// Commands waiting for this machine's turn.
    commands: VecDeque<Cmd>,
}

/// What one step of the bus asks of its shell: frames to write, in order, and what happened
/// to which device (by its index on the bus).
#[derive(Debug, Default)]
pub(super) struct BusStep {
    pub send: Vec<Vec<u8>>,
    pub happened: Vec<(usize, Happening)>,
}

impl BusStep {
    fn append(&mut self, other: BusStep) {
        self.send.extend(other.send);
        self.happened.extend(other.happened);
    }

    fn take(&mut self, device: usize, step: super::Step) -> bool {
        let sent = !step.send.is_empty();
        self.send.extend(step.send);
        self.happened
            .extend(step.happened.into_iter().map(|h| (device, h)));
        sent
    }
}

pub(super) struct Bus {
    members: Vec<Member>,
    /// The machine whose request is on the wire.
    owner: Option<usize>,
    /// Where the next round of turns starts.
    next: usize,
}

impl Bus {
    pub fn new(machines: Vec<Machine>) -> Bus {
        Bus {
            members: machines
                .into_iter()
                .map(|machine| Member {
                    machine,
                    open: false,
                    stop: false,
                    commands: VecDeque::new(),
                })
                .collect(),
            owner: None,
            next: 0,
        }
    }

    pub fn machine(&self, device: usize) -> Option<&Machine> {
        self.members.get(device).map(|m| &m.machine)
    }

    /// The machine of `device`, fresh (after a panic left the old one in an unknown state).
    pub fn replace(&mut self, device: usize, machine: Machine) {
        if let Some(m) = self.members.get_mut(device) {
            m.machine = machine;
        }
    }

    pub fn opened(&mut self, now: Instant) -> BusStep {
        self.owner = None;
        for m in &mut self.members {
            m.open = true;
        }
        self.turns(now)
    }

    /// The port is gone: every machine hears it, and commands that waited for a turn fail.
    pub fn closed(&mut self) -> BusStep {
        self.owner = None;
        let mut out = BusStep::default();
        for (i, m) in self.members.iter_mut().enumerate() {
            m.open = false;
            out.take(i, m.machine.closed());
            for cmd in m.commands.drain(..) {
                if !matches!(cmd, Cmd::Feedback { .. }) {
                    out.happened.push((
                        i,
                        Happening::Done {
                            cmd,
                            result: Err(SerialFailure::PortClosed),
                        },
                    ));
                }
            }
        }
        out
    }

    pub fn command(&mut self, device: usize, cmd: Cmd, now: Instant) -> BusStep {
        let Some(m) = self.members.get_mut(device) else {
            return BusStep::default();
        };
        m.commands.push_back(cmd);
        self.turns(now)
    }

    pub fn shutdown(&mut self, now: Instant) -> BusStep {
        for m in &mut self.members {
            m.stop = true;
        }
        self.turns(now)
    }

    /// Bytes from the wire: the owner's answer (nobody else is waiting for one).
    pub fn bytes(&mut self, data: &[u8], now: Instant) -> BusStep {
        let mut out = BusStep::default();
        if let Some(o) = self.owner {
            let step = self.members[o].machine.bytes(data, now);
            out.take(o, step);
            if !self.members[o].machine.awaiting() {
                self.owner = None;
            }
        }
        if self.owner.is_none() {
            out.append(self.turns(now));
        }
        out
    }

    pub fn tick(&mut self, now: Instant) -> BusStep {
        let mut out = BusStep::default();
        if let Some(o) = self.owner {
            // Its answer's deadline: a retry (which keeps the line) or giving up.
            let step = self.members[o].machine.tick(now);
            out.take(o, step);
            if self.members[o].machine.awaiting() {
                return out;
            }
            self.owner = None;
        }
        out.append(self.turns(now));
        out
    }

    /// Each machine in turn, from `next`, until one puts a request on the wire.
    fn turns(&mut self, now: Instant) -> BusStep {
        let mut out = BusStep::default();
        if self.owner.is_some() || self.members.is_empty() {
            return out;
        }
        let n = self.members.len();
        for k in 0..n {
            let i = (self.next + k) % n;
            let m = &mut self.members[i];
            let step = if m.open {
                m.open = false;
                m.machine.opened(now)
            } else if m.stop {
                m.stop = false;
                m.machine.shutdown(now)
            } else if let Some(cmd) = m.commands.pop_front() {
                m.machine.command(cmd, now)
            } else {
                m.machine.tick(now)
            };
            out.take(i, step);
            if m.machine.awaiting() {
                self.owner = Some(i);
                self.next = (i + 1) % n;
                break;
            }
        }
        out
    }

    pub fn idle(&self) -> bool {
        self.owner.is_none()
            && self
                .members
                .iter()
                .all(|m| m.machine.idle() && m.commands.is_empty() && !m.stop)
    }

    pub fn next_deadline(&self, now: Instant) -> Option<Instant> {
        if let Some(o) = self.owner {
            return self.members[o].machine.next_deadline();
        }
        let waiting = self
            .members
            .iter()
            .any(|m| m.open || m.stop || !m.commands.is_empty());
        if waiting {
            return Some(now);
        }
        self.members
            .iter()
            .filter_map(|m| m.machine.next_deadline())
            .min()
    }
}

#[cfg(test)]
mod tests;
