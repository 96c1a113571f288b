//! Serial devices (DESIGN section 4): Modbus RTU relay boards and OSDP readers.
//!
//! The protocols are pure state machines (`modbus::Relay`, `osdp::Cp`). This module is their
//! shell: one OS thread per port, so blocking serial I/O never runs on the async runtime's
//! workers. The thread opens the port (reopening with backoff after `EIO`, a hang-up or a
//! vanished device), waits in `poll(2)` on the port and on a wake-up socket (so a command is
//! written the moment it arrives, not at the next timeout), feeds the machine, writes what it
//! asks, and reports what happened to the device hub through a callback.

mod bus;
pub mod cards;
pub mod modbus;
pub mod osdp;
pub mod sc;
pub mod types;

pub use types::{Cmd, CredentialKind, Happening, LinkReason, Report, SerialFailure, Step};

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::config::{Config, DeviceConfig, DriverConfig};
use crate::telemetry::{events as t, InternalEvent};
use modbus::{Relay, RelaySettings};
use osdp::{Cp, ReaderSettings};

/// Why the serial ports could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SerialSetupError {
    #[error("devices `{device}`: {message}")]
    Device {
        device: String,
        message: &'static str,
    },
    #[error("serial wake-up socket: {0}")]
    Wake(#[source] std::io::Error),
    #[error("cannot start the serial thread for `{device}`: {source}")]
    Thread {
        device: String,
        source: std::io::Error,
    },
}

enum Machine {
    Relay(Box<Relay>),
    Reader(Box<Cp>),
}

impl Machine {
    fn for_device(d: &DeviceConfig) -> Result<Machine, SerialSetupError> {
        match &d.settings {
            DriverConfig::ModbusRelay(m) => {
                let mut s = RelaySettings::new(m.address, m.coil, m.pulse, m.flash);
                if let Some(t) = d.offline_after {
                    s.offline_after = t;
                }
                // Three polls fit in the silence allowed, so one lost answer is not an outage.
                s.poll_every = s.poll_every.min(s.offline_after / 3);
                Ok(Machine::Relay(Box::new(Relay::new(s))))
            }
            DriverConfig::Contact(crate::config::Contact::ModbusInput(m)) => {
                let mut s =
                    RelaySettings::input(m.address, m.input, m.closed == crate::config::OnOff::On);
                if let Some(t) = d.offline_after {
                    s.offline_after = t;
                }
                Ok(Machine::Relay(Box::new(Relay::new(s))))
            }
            DriverConfig::Osdp(o) => {
                let scbk = o.scbk_key().map_err(|message| SerialSetupError::Device {
                    device: d.id.clone(),
                    message,
                })?;
                let mut s = ReaderSettings::new(o.address, scbk, o.output_pulse());
                s.card_format = o.card_format;
                s.install_scbk = o.install_scbk;
                s.contact_input = o.contact_input;
                if let Some(t) = d.offline_after {
                    s.offline_after = t;
                }
                Ok(Machine::Reader(Box::new(Cp::new(
                    s,
                    Box::new(rand::random::<[u8; 8]>),
                    Instant::now(),
                ))))
            }
            _ => Err(SerialSetupError::Device {
                device: d.id.clone(),
                message: "is not a serial device",
            }),
        }
    }

    fn opened(&mut self, now: Instant) -> Step {
        match self {
            Machine::Relay(m) => m.opened(now),
            Machine::Reader(m) => m.opened(now),
        }
    }
    fn closed(&mut self) -> Step {
        match self {
            Machine::Relay(m) => m.closed(),
            Machine::Reader(m) => m.closed(),
        }
    }
    fn command(&mut self, cmd: Cmd, now: Instant) -> Step {
        match self {
            Machine::Relay(m) => m.command(cmd, now),
            Machine::Reader(m) => m.command(cmd, now),
        }
    }
    fn bytes(&mut self, data: &[u8], now: Instant) -> Step {
        match self {
            Machine::Relay(m) => m.bytes(data, now),
            Machine::Reader(m) => m.bytes(data, now),
        }
    }
    fn tick(&mut self, now: Instant) -> Step {
        match self {
            Machine::Relay(m) => m.tick(now),
            Machine::Reader(m) => m.tick(now),
        }
    }
    fn shutdown(&mut self, now: Instant) -> Step {
        match self {
            Machine::Relay(m) => m.shutdown(now),
            Machine::Reader(m) => m.shutdown(now),
        }
    }
    fn idle(&self) -> bool {
        match self {
            Machine::Relay(m) => m.idle(),
            Machine::Reader(m) => m.idle(),
        }
    }
    /// Whether its request is on the wire, waiting for the answer.
    fn awaiting(&self) -> bool {
        match self {
            Machine::Relay(m) => m.awaiting(),
            Machine::Reader(m) => m.awaiting(),
        }
    }
    fn next_deadline(&self) -> Option<Instant> {
        match self {
            Machine::Relay(m) => m.next_deadline(),
            Machine::Reader(m) => m.next_deadline(),
        }
    }
    fn stats(&self, s: &mut crate::telemetry::SerialStats) {
        match self {
            Machine::Relay(m) => s.noise_bytes = m.noise_bytes,
            Machine::Reader(m) => {
                s.noise_bytes = m.noise_bytes();
                s.frames = m.counters.frames;
                s.crc_errors = m.counters.crc_errors + m.counters.length_errors;
                s.sc_failures = m.counters.sc_failures;
                s.naks = m.counters.naks;
            }
        }
    }
}

struct Port {
    commands: mpsc::Sender<(usize, Cmd)>,
    wake: UnixStream,
    thread: JoinHandle<()>,
}

/// The running serial ports, and which port and bus position each device has.
pub struct Ports {
    ports: Vec<Port>,
    devices: HashMap<String, (usize, usize)>,
    stop: Arc<AtomicBool>,
}

impl Ports {
    /// Starts one thread per serial port in `config`, owning every device on it (a shared
    /// RS-485 bus). `report` is called from those threads.
    pub fn start(
        config: &Config,
        report: impl Fn(Report) -> bool + Send + Clone + 'static,
    ) -> Result<Ports, SerialSetupError> {
        let stop = Arc::new(AtomicBool::new(false));
        // One bus per port; validation made every device on it agree on the baud rate.
        let mut buses: Vec<(std::path::PathBuf, u32, Vec<DeviceConfig>)> = Vec::new();
        for d in &config.devices {
            let Some((path, baud)) = d.serial_port() else {
                continue;
            };
            match buses.iter_mut().find(|(p, _, _)| p == path) {
                Some((_, _, devices)) => devices.push(d.clone()),
                None => buses.push((path.to_owned(), baud, vec![d.clone()])),
            }
        }
        let mut ports = Vec::new();
        let mut devices = HashMap::new();
        for (path, baud, configs) in buses {
            let machines = configs
                .iter()
                .map(Machine::for_device)
                .collect::<Result<Vec<_>, _>>()?;
            let (tx, rx) = mpsc::channel();
            let (wake, wake_rx) = UnixStream::pair().map_err(SerialSetupError::Wake)?;
            wake_rx
                .set_nonblocking(true)
                .map_err(SerialSetupError::Wake)?;
            for (i, d) in configs.iter().enumerate() {
                devices.insert(d.id.clone(), (ports.len(), i));
            }
            let first = configs[0].id.clone();
            let shell = Shell {
                devices: configs.iter().map(|d| d.id.clone()).collect(),
                path,
                baud,
                bus: bus::Bus::new(machines),
                commands: rx,
                wake: wake_rx,
                stop: stop.clone(),
                report: report.clone(),
            };
            let thread = std::thread::Builder::new()
                .name(format!("serial-{first}"))
                .spawn(move || shell.supervised(&configs))
                .map_err(|source| SerialSetupError::Thread {
                    device: first.clone(),
                    source,
                })?;
            ports.push(Port {
                commands: tx,
                wake,
                thread,
            });
        }
        Ok(Ports {
            ports,
            devices,
            stop,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.ports.is_empty()
    }

    /// Hands a command to the device's port thread and wakes it.
    pub fn send(&self, device: &str, cmd: Cmd) -> bool {
        let Some(&(port, index)) = self.devices.get(device) else {
            return false;
        };
        let Some(p) = self.ports.get(port) else {
            return false;
        };
        if p.commands.send((index, cmd)).is_err() {
            return false;
        }
        let _ = (&p.wake).write(&[1]);
        true
    }

    /// Stops every thread (a relay without flash is switched off first) and waits for them.
    pub fn stop(self) {
        self.stop.store(true, Ordering::SeqCst);
        for p in &self.ports {
            let _ = (&p.wake).write(&[0]);
        }
        for p in self.ports {
            let _ = p.thread.join();
        }
    }
}

/// Test hook (`ZENEDGE_FAULT=serial-port-panics`): the first port thread whose device comes
/// online panics once, as a bug in a serial machine would.
fn fault_hook_panic_once() {
    static FIRED: AtomicBool = AtomicBool::new(false);
    if std::env::var("ZENEDGE_FAULT").as_deref() == Ok("serial-port-panics")
        && !FIRED.swap(true, Ordering::SeqCst)
    {
        panic!("fault hook: a serial port thread panics");
    }
}

/// One port's thread: the port, the bus of devices on it, their commands.
struct Shell<F> {
    /// The devices on the port, in bus order.
    devices: Vec<String>,
    path: std::path::PathBuf,
    baud: u32,
    bus: bus::Bus,
    commands: mpsc::Receiver<(usize, Cmd)>,
    wake: UnixStream,
    stop: Arc<AtomicBool>,
    report: F,
}

const MIN_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How long a stopping thread waits for its last command (a relay's OFF) to be answered.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(500);

enum Wait {
    Readable,
    Woken,
    Timeout,
    Lost(String),
}

impl<F: Fn(Report) -> bool> Shell<F> {
    /// The port thread: runs the port until the stop, and starts it again with backoff
    /// (reported, counted) if it panics. The other ports and the daemon keep running.
    fn supervised(mut self, configs: &[DeviceConfig]) {
        let mut restarts = crate::runtime::supervise::Restarts::default();
        loop {
            let began = Instant::now();
            let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.run()));
            if ran.is_ok() || self.stop.load(Ordering::SeqCst) {
                return;
            }
            // What the machines were in the middle of is unknown: begin again from fresh ones,
            // with the port closed (it was dropped by the unwinding) and the devices offline.
            for (i, d) in configs.iter().enumerate() {
                match Machine::for_device(d) {
                    Ok(machine) => self.bus.replace(i, machine),
                    Err(_) => return,
                }
            }
            self.stats_all(|s| s.open = false);
            self.all_offline();
            self.fail_waiting_commands(SerialFailure::PortClosed);
            let delay = restarts.failed(began.elapsed());
            t::AdapterRestarting {
                adapter: &format!("serial {}", self.path.display()),
                error: &"it panicked",
                retry_in_ms: delay.as_millis() as u64,
                restarts: restarts.count(),
            }
            .emit();
            self.sleep(delay);
        }
    }

    fn run(&mut self) {
        let mut backoff = MIN_BACKOFF;
        let mut told_closed = false;
        while !self.stop.load(Ordering::SeqCst) {
            let port = serialport::new(self.path.to_string_lossy(), self.baud)
                .timeout(Duration::from_millis(1))
                .open_native();
            let mut port = match port {
                Ok(p) => p,
                Err(error) => {
                    if !told_closed {
                        for device in &self.devices {
                            t::SerialOpenFailed {
                                device,
                                port: &self.path.display(),
                                error: &error,
                            }
                            .emit();
                        }
                        self.all_offline();
                        told_closed = true;
                    }
                    self.stats_all(|s| s.last_error = Some(error.to_string()));
                    self.fail_waiting_commands(SerialFailure::PortClosed);
                    self.sleep(backoff);
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
            };
            for device in &self.devices {
                t::SerialOpened {
                    device,
                    port: &self.path.display(),
                }
                .emit();
            }
            self.stats_all(|s| {
                s.opens += 1;
                s.open = true;
                s.last_error = None;
            });
            backoff = MIN_BACKOFF;
            let error = self.serve(&mut port);
            let step = self.bus.closed();
            self.apply_happenings(step.happened);
            self.stats_all(|s| s.open = false);
            match error {
                None => break,
                Some(error) => {
                    for device in &self.devices {
                        t::SerialLost {
                            device,
                            port: &self.path.display(),
                            error: &error,
                        }
                        .emit();
                    }
                    self.stats_all(|s| {
                        s.losses += 1;
                        s.last_error = Some(error.clone());
                    });
                    self.all_offline();
                    told_closed = true;
                    drop(port);
                    self.sleep(backoff);
                }
            }
        }
    }

    /// Runs the bus on an open port until it is lost (`Some(error)`) or the daemon stops.
    fn serve(&mut self, port: &mut serialport::TTYPort) -> Option<String> {
        let step = self.bus.opened(Instant::now());
        if let Err(e) = self.apply(port, step) {
            return Some(e.to_string());
        }
        let mut stopping: Option<Instant> = None;
        let mut buf = [0u8; 512];
        loop {
            let now = Instant::now();
            if stopping.is_none() && self.stop.load(Ordering::SeqCst) {
                stopping = Some(now + SHUTDOWN_GRACE);
                let step = self.bus.shutdown(now);
                if let Err(e) = self.apply(port, step) {
                    return Some(e.to_string());
                }
            }
            if let Some(until) = stopping {
                if self.bus.idle() || now >= until {
                    return None;
                }
            }
            while let Ok((device, cmd)) = self.commands.try_recv() {
                let step = self.bus.command(device, cmd, now);
                if let Err(e) = self.apply(port, step) {
                    return Some(e.to_string());
                }
            }
            let step = self.bus.tick(now);
            if let Err(e) = self.apply(port, step) {
                return Some(e.to_string());
            }
            let timeout = self
                .bus
                .next_deadline(now)
                .map(|t| t.saturating_duration_since(Instant::now()))
                .unwrap_or(Duration::from_millis(100))
                .clamp(Duration::from_millis(1), Duration::from_millis(100));
            match wait(port.as_raw_fd(), self.wake.as_raw_fd(), timeout) {
                Wait::Lost(e) => return Some(e),
                Wait::Timeout => {}
                Wait::Woken => self.drain_wake(),
                Wait::Readable => match port.read(&mut buf) {
                    Ok(0) => return Some("end of file".into()),
                    Ok(n) => {
                        let step = self.bus.bytes(&buf[..n], Instant::now());
                        if let Err(e) = self.apply(port, step) {
                            return Some(e.to_string());
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Some(e.to_string()),
                },
            }
        }
    }

    fn apply(&mut self, port: &mut serialport::TTYPort, step: bus::BusStep) -> std::io::Result<()> {
        for frame in &step.send {
            port.write_all(frame)?;
        }
        self.apply_happenings(step.happened);
        for (i, device) in self.devices.iter().enumerate() {
            if let Some(machine) = self.bus.machine(i) {
                crate::telemetry::serial_stats(device, |s| machine.stats(s));
            }
        }
        Ok(())
    }

    fn apply_happenings(&mut self, happened: Vec<(usize, Happening)>) {
        for (i, h) in happened {
            let online = matches!(h, Happening::Online(_));
            self.emit(i, h);
            if online {
                fault_hook_panic_once();
            }
        }
    }

    /// Every device on the port is offline with it.
    fn all_offline(&self) {
        for i in 0..self.devices.len() {
            self.emit(i, Happening::Offline(LinkReason::PortClosed));
        }
    }

    fn emit(&self, device: usize, happening: Happening) {
        let Some(id) = self.devices.get(device) else {
            return;
        };
        let _ = (self.report)(Report {
            device: id.clone(),
            happening,
        });
    }

    fn fail_waiting_commands(&self, error: SerialFailure) {
        while let Ok((device, cmd)) = self.commands.try_recv() {
            if !matches!(cmd, Cmd::Feedback { .. }) {
                self.emit(
                    device,
                    Happening::Done {
                        cmd,
                        result: Err(error.clone()),
                    },
                );
            }
        }
    }

    /// Sleeps up to `d`, returning early when woken (a command to fail, or the stop).
    fn sleep(&self, d: Duration) {
        let deadline = Instant::now() + d;
        while !self.stop.load(Ordering::SeqCst) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            let mut fds = [libc::pollfd {
                fd: self.wake.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            }];
            let ms = left.as_millis().min(1000) as libc::c_int;
            // SAFETY: one valid pollfd for the duration of the call.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), 1, ms) };
            if n > 0 {
                self.drain_wake();
                self.fail_waiting_commands(SerialFailure::PortClosed);
            }
        }
    }

    /// Empties the wake-up socket (its bytes only say "look at the commands").
    fn drain_wake(&self) {
        let mut sink = [0u8; 64];
        while matches!((&self.wake).read(&mut sink), Ok(n) if n > 0) {}
    }

    /// The same change to every device's port statistics (they share the port).
    fn stats_all(&self, f: impl Fn(&mut crate::telemetry::SerialStats)) {
        for device in &self.devices {
            crate::telemetry::serial_stats(device, &f);
        }
    }
}

/// Waits for the port to be readable or the wake-up socket to be written.
fn wait(port: i32, wake: i32, timeout: Duration) -> Wait {
    let mut fds = [
        libc::pollfd {
            fd: port,
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: wake,
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    let ms = timeout.as_millis().min(1000) as libc::c_int;
    // SAFETY: two valid pollfds for the duration of the call.
    let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, ms) };
    if n < 0 {
        let e = std::io::Error::last_os_error();
        if e.kind() == std::io::ErrorKind::Interrupted {
            return Wait::Timeout;
        }
        return Wait::Lost(e.to_string());
    }
    let p = fds[0].revents;
    if p & (libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0 && p & libc::POLLIN == 0 {
        return Wait::Lost("hang-up (device unplugged)".into());
    }
    if p & libc::POLLIN != 0 {
        return Wait::Readable;
    }
    if fds[1].revents != 0 {
        return Wait::Woken;
    }
    Wait::Timeout
}
