//! Serial devices for tests: pty pairs standing in for USB–RS-485 adapters, a Modbus relay
//! board simulator, and an OSDP reader run by libosdp (the reference implementation) in PD mode.
//!
//! The daemon opens a stable symlink (like `/dev/serial/by-id/...`) that points at the pty's
//! slave; the simulator holds the master. Dropping the simulator closes the master: to the
//! daemon that is an unplugged adapter. A new pty linked at the same path is the replug.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// A pty whose slave is reachable at `link`.
pub struct Pty {
    pub master: File,
    pub slave: PathBuf,
}

impl Pty {
    pub fn at(link: &Path) -> Pty {
        // Opened close-on-exec in one call: a daemon another test spawns at this moment must
        // not inherit the master, or closing ours would not hang up the line. No slave fd is
        // opened here, so none can leak either.
        // SAFETY: plain libc calls on an fd we own; the name buffer is ours and NUL-terminated.
        let (master, name) = unsafe {
            let master = libc::open(
                c"/dev/ptmx".as_ptr(),
                libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC | libc::O_NONBLOCK,
            );
            assert!(
                master >= 0,
                "/dev/ptmx: {}",
                std::io::Error::last_os_error()
            );
            assert_eq!(libc::grantpt(master), 0);
            assert_eq!(libc::unlockpt(master), 0);
            let mut t: libc::termios = std::mem::zeroed();
            libc::tcgetattr(master, &mut t);
            libc::cfmakeraw(&mut t);
            libc::tcsetattr(master, libc::TCSANOW, &t);
            let mut buf = [0 as libc::c_char; 128];
            assert_eq!(libc::ptsname_r(master, buf.as_mut_ptr(), buf.len()), 0);
            let name = std::ffi::CStr::from_ptr(buf.as_ptr())
                .to_string_lossy()
                .into_owned();
            (master, name)
        };
        let tmp = link.with_extension("new");
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(&name, &tmp).unwrap();
        std::fs::rename(&tmp, link).unwrap();
        Pty {
            // SAFETY: `master` is an fd we own from here on.
            master: unsafe { File::from_raw_fd(master) },
            slave: PathBuf::from(name),
        }
    }
}

/// Waits until the master has bytes (or the timeout); true when readable.
fn readable(f: &File, timeout_ms: i32) -> bool {
    let mut fds = [libc::pollfd {
        fd: f.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    }];
    // SAFETY: one valid pollfd.
    let n = unsafe { libc::poll(fds.as_mut_ptr(), 1, timeout_ms) };
    n > 0 && fds[0].revents & libc::POLLIN != 0
}

/// Reads what is there; an unopened slave (EIO) reads as nothing.
fn read_some(f: &mut File, buf: &mut [u8]) -> usize {
    if !readable(f, 5) {
        std::thread::sleep(Duration::from_millis(2));
        return 0;
    }
    match f.read(buf) {
        Ok(n) => n,
        Err(_) => {
            std::thread::sleep(Duration::from_millis(5));
            0
        }
    }
}

/// What a simulated relay board was told, in order: (register address, value).
pub type Writes = Arc<Mutex<Vec<(u16, u16)>>>;

/// A Modbus RTU relay board at `address` on a pty linked at `link`.
pub struct Board {
    pub writes: Writes,
    /// While set, the board answers nothing (a dead board, a cut A/B pair).
    pub silent: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Board {
    pub fn start(link: &Path, address: u8) -> Board {
        let mut pty = Pty::at(link);
        let writes: Writes = Arc::default();
        let silent = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let (w, s, st) = (writes.clone(), silent.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut coils = 0u8;
            let mut buf = Vec::new();
            let mut chunk = [0u8; 256];
            while !st.load(Ordering::SeqCst) {
                let n = read_some(&mut pty.master, &mut chunk);
                buf.extend_from_slice(&chunk[..n]);
                // Every request ZenEdge sends (FC01, FC05) is 8 bytes.
                while buf.len() >= 8 {
                    let f: Vec<u8> = buf[..8].to_vec();
                    let crc = zenedge::serial::modbus::crc16(&f[..6]);
                    if f[0] != address || crc.to_le_bytes() != [f[6], f[7]] {
                        buf.remove(0);
                        continue;
                    }
                    buf.drain(..8);
                    let reg = u16::from_be_bytes([f[2], f[3]]);
                    let value = u16::from_be_bytes([f[4], f[5]]);
                    // A silent board still hears (and the test sees) what it was told.
                    if s.load(Ordering::SeqCst) {
                        if f[1] == 0x05 {
                            w.lock().unwrap().push((reg, value));
                        }
                        continue;
                    }
                    let reply = match f[1] {
                        0x01 => {
                            let mut r = vec![address, 0x01, 1, coils];
                            let crc = zenedge::serial::modbus::crc16(&r);
                            r.extend_from_slice(&crc.to_le_bytes());
                            r
                        }
                        0x05 => {
                            w.lock().unwrap().push((reg, value));
                            if reg < 8 {
                                if value == 0xFF00 {
                                    coils |= 1 << reg;
                                } else {
                                    coils &= !(1 << reg);
                                }
                            }
                            f.clone()
                        }
                        _ => continue,
                    };
                    let _ = pty.master.write_all(&reply);
                }
            }
            // Dropping the master here is the unplug.
        });
        Board {
            writes,
            silent,
            stop,
            thread: Some(thread),
        }
    }

    pub fn writes(&self) -> Vec<(u16, u16)> {
        self.writes.lock().unwrap().clone()
    }

    /// Closes the pty master: the adapter is unplugged.
    pub fn unplug(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

impl Drop for Board {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Relay boards run by pymodbus (`tests/shim/modbus_boards.py`) on one RS-485 bus at `link`:
/// the daemon's pty is bridged to a second pty that pymodbus opens as its serial port, as a
/// USB adapter and a bus would carry the bytes. Dropping it (or [`PyModbus::unplug`]) closes
/// the daemon's side: the adapter is unplugged.
pub struct PyModbus {
    /// Every coil write pymodbus carried out, in order: (board address, coil, on).
    writes: Arc<Mutex<Vec<(u8, u16, bool)>>>,
    /// pymodbus's stdin, where discrete inputs are set.
    inputs: Option<Mutex<std::process::ChildStdin>>,
    /// The inputs pymodbus confirmed it set, in order.
    inputs_set: Arc<Mutex<Vec<(u8, u16, bool)>>>,
    child: std::process::Child,
    stop: Arc<AtomicBool>,
    bridge: Option<JoinHandle<()>>,
}

impl PyModbus {
    pub fn start(link: &Path, addresses: &[u8]) -> PyModbus {
        let daemon_side = Pty::at(link);
        let board_side = Pty::at(&link.with_extension("pymodbus"));
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/shim/modbus_boards.py");
        // Debian's python, which has Debian's pymodbus (scripts/setup-test-deps).
        let mut child = std::process::Command::new("/usr/bin/python3")
            .arg(script)
            .arg(&board_side.slave)
            .args(addresses.iter().map(u8::to_string))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("python3-pymodbus is installed by scripts/setup-test-deps");
        let inputs = child.stdin.take().map(Mutex::new);
        let inputs_set: Arc<Mutex<Vec<(u8, u16, bool)>>> = Arc::default();
        let set = inputs_set.clone();
        let writes: Arc<Mutex<Vec<(u8, u16, bool)>>> = Arc::default();
        let stdout = child.stdout.take().unwrap();
        let w = writes.clone();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                let f: Vec<&str> = line.split_whitespace().collect();
                if let ["input", board, input, value] = f[..] {
                    if let (Ok(b), Ok(i)) = (board.parse(), input.parse()) {
                        set.lock().unwrap().push((b, i, value == "1"));
                    }
                }
                if let [board, coil, value] = f[..] {
                    if let (Ok(b), Ok(c)) = (board.parse(), coil.parse()) {
                        w.lock().unwrap().push((b, c, value == "1"));
                    }
                }
            }
        });
        let stop = Arc::new(AtomicBool::new(false));
        let st = stop.clone();
        let bridge = std::thread::spawn(move || {
            let (mut a, mut b) = (daemon_side.master, board_side.master);
            let mut chunk = [0u8; 256];
            while !st.load(Ordering::SeqCst) {
                let n = read_some(&mut a, &mut chunk);
                if n > 0 {
                    let _ = b.write_all(&chunk[..n]);
                }
                let n = read_some(&mut b, &mut chunk);
                if n > 0 {
                    let _ = a.write_all(&chunk[..n]);
                }
            }
            // Dropping the daemon's master here is the unplug.
        });
        PyModbus {
            writes,
            inputs,
            inputs_set,
            child,
            stop,
            bridge: Some(bridge),
        }
    }

    pub fn writes(&self) -> Vec<(u8, u16, bool)> {
        self.writes.lock().unwrap().clone()
    }

    /// Sets discrete input `input` of board `address` (a door contact's wire) and waits until
    /// pymodbus says it is set.
    pub async fn set_input(&self, address: u8, input: u16, on: bool) {
        let before = self.inputs_set.lock().unwrap().len();
        if let Some(stdin) = &self.inputs {
            let line = format!("input {address} {input} {}\n", u8::from(on));
            stdin.lock().unwrap().write_all(line.as_bytes()).unwrap();
        }
        // pymodbus answers on its stdout (read by a thread): polled, bounded.
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !self.inputs_set.lock().unwrap()[before..].contains(&(address, input, on)) {
            assert!(
                std::time::Instant::now() < deadline,
                "pymodbus never set input {input} of board {address}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Closes the daemon's side of the bus: the adapter is unplugged.
    pub fn unplug(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.bridge.take() {
            t.join().unwrap();
        }
    }
}

impl Drop for PyModbus {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes a reader's answer to the pty master (an unplugged one refuses it).
fn write_master(
    master: &Arc<Mutex<Option<File>>>,
    buf: &[u8],
) -> Result<usize, libosdp::ChannelError> {
    let mut slot = master.lock().unwrap();
    let Some(f) = slot.as_mut() else {
        return Err(libosdp::ChannelError::TransportError);
    };
    f.write_all(buf)
        .map(|_| buf.len())
        .map_err(|_| libosdp::ChannelError::TransportError)
}

/// The pty master as libosdp's channel. libosdp keeps the channel for the life of the process
/// (the Rust binding leaks it), so the file sits behind a shared slot the test empties to
/// close it.
struct MasterChannel(Arc<Mutex<Option<File>>>);

impl libosdp::Channel for MasterChannel {
    fn get_id(&self) -> i32 {
        0
    }

    fn read(&mut self, buf: &mut [u8]) -> Result<usize, libosdp::ChannelError> {
        let mut slot = self.0.lock().unwrap();
        let Some(f) = slot.as_mut() else {
            return Err(libosdp::ChannelError::TransportError);
        };
        match f.read(buf) {
            Ok(n) => Ok(n),
            // No slave open yet (EIO) or nothing to read: nothing this time.
            Err(_) => Err(libosdp::ChannelError::WouldBlock),
        }
    }

    fn write(&mut self, buf: &[u8]) -> Result<usize, libosdp::ChannelError> {
        write_master(&self.0, buf)
    }

    fn flush(&mut self) -> Result<(), libosdp::ChannelError> {
        Ok(())
    }

    fn close(&mut self) -> Result<(), libosdp::ChannelError> {
        Ok(())
    }
}

/// An OSDP reader: libosdp's own peripheral-device implementation on a pty linked at `link`,
/// with Secure Channel enforced when `scbk` is given.
pub struct Reader {
    /// Every command the reader carried out (LED, BUZ, OUT), as libosdp decoded it.
    pub commands: Arc<Mutex<Vec<(std::time::Instant, libosdp::OsdpCommand)>>>,
    events: mpsc::Sender<libosdp::OsdpEvent>,
    online: Arc<AtomicBool>,
    sc_active: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    /// The reader's four inputs (contact status monitoring), 1 = active.
    inputs: Arc<Mutex<[u8; READER_INPUTS]>>,
}

/// The inputs a test reader monitors.
const READER_INPUTS: usize = 4;

/// The reader's inputs as an osdp_ISTATR report.
fn input_report(inputs: &[u8; READER_INPUTS]) -> libosdp::OsdpStatusReport {
    let mut report = [0u8; 64];
    report[..READER_INPUTS].copy_from_slice(inputs);
    libosdp::OsdpStatusReport {
        type_: libosdp::OsdpStatusReportType::Input,
        nr_entries: READER_INPUTS,
        report,
    }
}

/// An RS-485 bus for OSDP readers: the control panel's pty fanned out to every reader on it.
/// Each reader hears every byte and answers only its own address, as on a real multi-drop
/// line; their answers go back to the control panel.
pub struct OsdpBus {
    master: Arc<Mutex<Option<File>>>,
    taps: Arc<Mutex<Vec<mpsc::Sender<Vec<u8>>>>>,
    stop: Arc<AtomicBool>,
    /// What the line itself does to the traffic (lost replies, a cut, a busy reader).
    pub faults: Arc<Mutex<BusFaults>>,
}

/// Faults of the line between the control panel and its readers, set by a test.
#[derive(Debug, Default)]
pub struct BusFaults {
    /// The next reply from the reader at this address is lost on the wire.
    pub lose_reply_of: Option<u8>,
    /// Replies lost so far, and replies that reached the control panel.
    pub lost: usize,
    pub delivered: usize,
    /// While set, no reply reaches the control panel (a reader gone silent, a cut pair).
    pub mute: bool,
    /// The next this-many OUT commands are answered osdp_BUSY (unsecured, sequence number 0,
    /// as a busy reader sends it) instead of reaching the reader.
    pub busy_on_out: usize,
    /// Replies to OUT become osdp_OSTATR (output 0 on). Only a plain reply can be rewritten:
    /// a reader without Secure Channel.
    pub ostatr_for_out: bool,
    /// Every command packet the control panel sent, as sent: (address, code, packet).
    pub commands: Vec<(u8, u8, Vec<u8>)>,
}

/// A plain reply packet (mark byte first), as a reader without Secure Channel sends it.
fn plain_reply(address: u8, seq: u8, code: u8, data: &[u8]) -> Vec<u8> {
    let mut p = vec![0x53, address | 0x80, 0, 0, (seq & 3) | 0x04, code];
    p.extend_from_slice(data);
    let total = (p.len() + 2) as u16;
    p[2..4].copy_from_slice(&total.to_le_bytes());
    let crc = zenedge::serial::osdp::crc16(&p);
    p.extend_from_slice(&crc.to_le_bytes());
    let mut out = vec![0xFF];
    out.extend(p);
    out
}

/// (address, sequence number, code) of a command packet (SOM first).
fn command_of(p: &[u8]) -> Option<(u8, u8, u8)> {
    let ctrl = *p.get(4)?;
    let at = if ctrl & 0x08 != 0 {
        5 + usize::from(*p.get(5)?)
    } else {
        5
    };
    Some((p[1] & 0x7F, ctrl & 3, *p.get(at)?))
}

impl OsdpBus {
    pub fn at(link: &Path) -> OsdpBus {
        let pty = Pty::at(link);
        let reader = pty.master.try_clone().unwrap();
        let master = Arc::new(Mutex::new(Some(pty.master)));
        let taps: Arc<Mutex<Vec<mpsc::Sender<Vec<u8>>>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let faults: Arc<Mutex<BusFaults>> = Arc::default();
        let (t, st, f, m) = (taps.clone(), stop.clone(), faults.clone(), master.clone());
        std::thread::spawn(move || {
            let mut reader = reader;
            let mut chunk = [0u8; 256];
            let mut decoder = zenedge::serial::osdp::Decoder::default();
            while !st.load(Ordering::SeqCst) {
                let n = read_some(&mut reader, &mut chunk);
                decoder.push(&chunk[..n]);
                // Packet by packet, so the line can answer or record one.
                while let Some(Ok(p)) = decoder.next_packet() {
                    let Some((address, _, code)) = command_of(&p) else {
                        continue;
                    };
                    let busy = {
                        let mut f = f.lock().unwrap();
                        f.commands.push((address, code, p.clone()));
                        let busy = code == OUT && f.busy_on_out > 0;
                        if busy {
                            f.busy_on_out -= 1;
                        }
                        busy
                    };
                    if busy {
                        let _ = write_master(&m, &plain_reply(address, 0, 0x79, &[]));
                        continue;
                    }
                    let mut framed = vec![0xFF];
                    framed.extend_from_slice(&p);
                    for tap in t.lock().unwrap().iter() {
                        let _ = tap.send(framed.clone());
                    }
                }
            }
        });
        OsdpBus {
            master,
            taps,
            stop,
            faults,
        }
    }

    /// A reader's connection to the bus.
    fn tap(&self) -> BusChannel {
        let (tx, rx) = mpsc::channel();
        self.taps.lock().unwrap().push(tx);
        BusChannel {
            rx,
            pending: Vec::new(),
            master: self.master.clone(),
            faults: self.faults.clone(),
        }
    }

    /// Closes the pty master: the adapter is unplugged.
    pub fn unplug(self) {
        self.stop.store(true, Ordering::SeqCst);
        self.master.lock().unwrap().take();
    }
}

struct BusChannel {
    rx: mpsc::Receiver<Vec<u8>>,
    pending: Vec<u8>,
    master: Arc<Mutex<Option<File>>>,
    faults: Arc<Mutex<BusFaults>>,
}

/// osdp_OUT.
const OUT: u8 = 0x68;

impl libosdp::Channel for BusChannel {
    fn get_id(&self) -> i32 {
        0
    }

    fn read(&mut self, buf: &mut [u8]) -> Result<usize, libosdp::ChannelError> {
        while let Ok(bytes) = self.rx.try_recv() {
            self.pending.extend(bytes);
        }
        if self.pending.is_empty() {
            return Err(libosdp::ChannelError::WouldBlock);
        }
        let n = buf.len().min(self.pending.len());
        buf[..n].copy_from_slice(&self.pending[..n]);
        self.pending.drain(..n);
        Ok(n)
    }

    fn write(&mut self, buf: &[u8]) -> Result<usize, libosdp::ChannelError> {
        let mut f = self.faults.lock().unwrap();
        if f.mute {
            return Ok(buf.len());
        }
        let som = buf.iter().position(|&b| b == 0x53);
        let from = som.and_then(|s| buf.get(s + 1)).map(|a| a & 0x7F);
        if from.is_some() && f.lose_reply_of == from {
            f.lose_reply_of = None;
            f.lost += 1;
            return Ok(buf.len());
        }
        f.delivered += 1;
        let last = f.commands.last().and_then(|c| command_of(&c.2));
        if let (true, Some((address, _, OUT)), Some(som)) = (f.ostatr_for_out, last, som) {
            let seq = buf.get(som + 4).copied().unwrap_or(0) & 3;
            return write_master(&self.master, &plain_reply(address, seq, 0x4A, &[1]))
                .map(|_| buf.len());
        }
        write_master(&self.master, buf)
    }

    fn flush(&mut self) -> Result<(), libosdp::ChannelError> {
        Ok(())
    }

    fn close(&mut self) -> Result<(), libosdp::ChannelError> {
        Ok(())
    }
}

/// Stands for "no key yet" in [`Reader::start`]: a new reader, out of its box, on SCBK-D.
pub const NEW_READER: [u8; 16] = [0; 16];

impl Reader {
    /// A reader at `address` on a shared OSDP bus.
    pub fn on_bus(bus: &OsdpBus, address: i32, scbk: Option<[u8; 16]>) -> Reader {
        Reader::run(Box::new(bus.tap()), None, address, scbk)
    }

    pub fn start(link: &Path, address: i32, scbk: Option<[u8; 16]>) -> Reader {
        let pty = Pty::at(link);
        let master = Arc::new(Mutex::new(Some(pty.master)));
        Reader::run(
            Box::new(MasterChannel(master.clone())),
            Some(master),
            address,
            scbk,
        )
    }

    /// Runs libosdp's PD on `channel`; `unplug` is the master to close when it stops.
    fn run(
        channel: Box<dyn libosdp::Channel>,
        unplug: Option<Arc<Mutex<Option<File>>>>,
        address: i32,
        scbk: Option<[u8; 16]>,
    ) -> Reader {
        use libosdp::{OsdpFlag, PdCapEntity, PdCapability, PdInfoBuilder};
        let commands: Arc<Mutex<Vec<(std::time::Instant, libosdp::OsdpCommand)>>> = Arc::default();
        let (events, event_rx) = mpsc::channel::<libosdp::OsdpEvent>();
        let online = Arc::new(AtomicBool::new(false));
        let sc_active = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let inputs: Arc<Mutex<[u8; READER_INPUTS]>> = Arc::default();
        let (c, on, sc, st, ins) = (
            commands.clone(),
            online.clone(),
            sc_active.clone(),
            stop.clone(),
            inputs.clone(),
        );
        std::thread::spawn(move || {
            let mut info = PdInfoBuilder::new()
                .name("test reader")
                .unwrap()
                .address(address)
                .unwrap()
                .baud_rate(9600)
                .unwrap()
                .capability(PdCapability::OutputControl(PdCapEntity::new(1, 1)))
                .capability(PdCapability::LedControl(PdCapEntity::new(1, 1)))
                .capability(PdCapability::AudibleOutput(PdCapEntity::new(1, 1)))
                .capability(PdCapability::CheckCharacterSupport(PdCapEntity::new(1, 0)))
                .capability(PdCapability::ContactStatusMonitoring(PdCapEntity::new(
                    1,
                    READER_INPUTS as u8,
                )));
            match scbk {
                Some(key) if key == NEW_READER => {
                    // Secure Channel capable, no key of its own: libosdp's install mode, on
                    // SCBK-D until a control panel gives it a key with osdp_KEYSET.
                    info = info
                        .capability(PdCapability::CommunicationSecurity(PdCapEntity::new(1, 1)));
                }
                Some(key) => {
                    info = info
                        .flag(OsdpFlag::EnforceSecure)
                        .capability(PdCapability::CommunicationSecurity(PdCapEntity::new(1, 1)))
                        .secure_channel_key(key);
                }
                None => {}
            }
            let mut pd = libosdp::PeripheralDevice::new(info, channel).unwrap();
            pd.set_command_callback(move |cmd| {
                c.lock()
                    .unwrap()
                    .push((std::time::Instant::now(), cmd.clone()));
                // osdp_ISTAT: the inputs as they are now.
                if let libosdp::OsdpCommand::Status(s) = cmd {
                    if s.type_ == libosdp::OsdpStatusReportType::Input {
                        *s = input_report(&ins.lock().unwrap());
                    }
                }
                0
            });
            while !st.load(Ordering::SeqCst) {
                pd.refresh();
                on.store(pd.is_online(), Ordering::SeqCst);
                sc.store(pd.is_sc_active(), Ordering::SeqCst);
                while let Ok(e) = event_rx.try_recv() {
                    let _ = pd.notify_event(e);
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            // The unplug (a reader on a shared bus leaves the bus as it is).
            if let Some(master) = unplug {
                master.lock().unwrap().take();
            }
        });
        Reader {
            commands,
            events,
            online,
            sc_active,
            stop,
            inputs,
        }
    }

    /// Input `n` goes active (a door contact opening) or inactive: the reader reports it in
    /// its answer to the next poll (osdp_ISTATR), as libosdp's PD does.
    pub fn set_input(&self, n: usize, active: bool) {
        let report = {
            let mut inputs = self.inputs.lock().unwrap();
            inputs[n] = u8::from(active);
            input_report(&inputs)
        };
        self.events
            .send(libosdp::OsdpEvent::Status(report))
            .unwrap();
    }

    /// How many OUT commands the reader carried out.
    pub fn outputs(&self) -> usize {
        self.commands()
            .iter()
            .filter(|c| matches!(c, libosdp::OsdpCommand::Output(_)))
            .count()
    }

    /// Types `keys` on the reader's keypad.
    pub fn type_keys(&self, keys: &[u8]) {
        let e = libosdp::OsdpEvent::KeyPress(libosdp::OsdpEventKeyPress::new(keys.to_vec()));
        self.events.send(e).unwrap();
    }

    /// Presents a card whose raw data is `data`.
    pub fn present_card(&self, data: &[u8]) {
        let e = libosdp::OsdpEvent::CardRead(libosdp::OsdpEventCardRead::new_raw(data.to_vec()));
        self.events.send(e).unwrap();
    }

    /// Presents a Wiegand card: `nr_bits` bits of `data`, first bit in the top bit.
    pub fn present_wiegand(&self, nr_bits: usize, data: &[u8]) {
        let e = libosdp::OsdpEvent::CardRead(
            libosdp::OsdpEventCardRead::new_wiegand(nr_bits, data.to_vec()).unwrap(),
        );
        self.events.send(e).unwrap();
    }

    pub fn sc_active(&self) -> bool {
        self.sc_active.load(Ordering::SeqCst)
    }

    pub fn commands(&self) -> Vec<libosdp::OsdpCommand> {
        self.commands
            .lock()
            .unwrap()
            .iter()
            .map(|(_, c)| c.clone())
            .collect()
    }

    /// When the first OUT command reached the reader.
    pub fn first_output_at(&self) -> Option<std::time::Instant> {
        self.commands
            .lock()
            .unwrap()
            .iter()
            .find(|(_, c)| matches!(c, libosdp::OsdpCommand::Output(_)))
            .map(|(t, _)| *t)
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}
