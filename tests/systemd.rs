//! systemd notifications, read from a NOTIFY_SOCKET the test owns: READY=1 only once the
//! listeners answer, WATCHDOG=1 while the loops go round and not when one is wedged (fault
//! hook), STOPPING=1 on SIGTERM.

mod common;

use std::os::unix::net::UnixDatagram;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{Receiver, Reply};

struct Notified {
    rx: mpsc::Receiver<String>,
}

impl Notified {
    fn listen(path: &std::path::Path) -> Notified {
        let sock = UnixDatagram::bind(path).unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = sock.recv(&mut buf) {
                if tx
                    .send(String::from_utf8_lossy(&buf[..n]).into_owned())
                    .is_err()
                {
                    return;
                }
            }
        });
        Notified { rx }
    }

    /// The next message containing `what`, within `limit`.
    fn wait(&self, what: &str, limit: Duration) -> Option<String> {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            match self.rx.recv_timeout(left) {
                Ok(m) if m.contains(what) => return Some(m),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
    }
}

/// The daemon, killed on drop so that a failing assertion leaves no process behind.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(config: &std::path::Path, socket: &std::path::Path, fault: Option<&str>) -> Guard {
    // systemd names the watched process in WATCHDOG_PID; `exec` keeps the shell's pid.
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(r#"WATCHDOG_PID=$$ exec "$0" --config "$1" run"#)
        .arg(common::bin())
        .arg(config)
        .env("NOTIFY_SOCKET", socket)
        .env("WATCHDOG_USEC", "2000000")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if let Some(f) = fault {
        cmd.env("ZENEDGE_FAULT", f);
    }
    Guard(cmd.spawn().unwrap())
}

/// A ZenCore stand-in answering 200 and a room config pointing at it, on a fresh admin port.
async fn room() -> (
    Receiver,
    tempfile::TempDir,
    std::net::SocketAddr,
    std::path::PathBuf,
) {
    let rx = Receiver::start(|_| Reply::Status(200)).await;
    let dir = tempfile::tempdir().unwrap();
    let admin = common::free_port();
    let config = common::write_config(
        dir.path(),
        &common::config_text(dir.path(), &rx.url(), admin, ""),
    );
    (rx, dir, admin, config)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_watchdog_and_stopping() {
    let (_rx, dir, admin, config) = room().await;
    let socket = dir.path().join("notify.sock");
    let notified = Notified::listen(&socket);
    let mut child = spawn(&config, &socket, None);

    let ready = tokio::task::block_in_place(|| notified.wait("READY=1", Duration::from_secs(30)))
        .expect("READY=1");
    assert!(ready.contains("STATUS="), "{ready}");
    // READY came after the listeners were up: the admin API answers at once.
    let health = common::client()
        .get(format!("http://{admin}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status().as_u16(), 200);
    for _ in 0..3 {
        tokio::task::block_in_place(|| notified.wait("WATCHDOG=1", Duration::from_secs(3)))
            .expect("WATCHDOG=1 while healthy");
    }
    Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status()
        .unwrap();
    tokio::task::block_in_place(|| notified.wait("STOPPING=1", Duration::from_secs(10)))
        .expect("STOPPING=1");
    assert_eq!(child.0.wait().unwrap().code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wedged_delivery_loop_stops_the_watchdog() {
    let (_rx, dir, _admin, config) = room().await;
    let socket = dir.path().join("notify.sock");
    let notified = Notified::listen(&socket);
    let _child = spawn(&config, &socket, Some("wedge-delivery"));
    tokio::task::block_in_place(|| notified.wait("READY=1", Duration::from_secs(30)))
        .expect("READY=1");
    // Healthy, the watchdog comes every second; wedged, not once in four.
    let pet = tokio::task::block_in_place(|| notified.wait("WATCHDOG=1", Duration::from_secs(4)));
    assert!(
        pet.is_none(),
        "watchdog petted while delivery is wedged: {pet:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_essential_task_that_ends_makes_the_daemon_exit_non_zero() {
    // The runtime loop ending on a store failure, and the MQTT link's poll task panicking.
    for fault in ["device-task-ends", "mqtt-poll-panics"] {
        essential_task_ends(fault).await;
    }
}

async fn essential_task_ends(fault: &str) {
    let (_rx, dir, _admin, config) = room().await;
    let socket = dir.path().join("notify.sock");
    let _notified = Notified::listen(&socket);
    let mut child = spawn(&config, &socket, Some(fault));
    // It must not keep running (and answering 202) without its device task: it exits, non-zero,
    // for systemd to restart it.
    let pid = child.0.id().to_string();
    let status = tokio::task::block_in_place(|| {
        std::thread::scope(|scope| {
            let (tx, rx) = std::sync::mpsc::channel();
            let waiting = &mut child.0;
            scope.spawn(move || {
                let _ = tx.send(waiting.wait());
            });
            match rx.recv_timeout(Duration::from_secs(30)) {
                Ok(exited) => exited.ok(),
                Err(_) => {
                    // Still running: end it so the waiting thread returns, and fail below.
                    let _ = Command::new("kill").args(["-KILL", &pid]).status();
                    None
                }
            }
        })
    })
    .unwrap_or_else(|| panic!("the daemon kept running after {fault}"));
    assert!(!status.success(), "{fault}: {status:?}");
}
