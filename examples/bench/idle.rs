//! Idle CPU: the real release binary with ten MQTT devices online and nothing happening, its
//! CPU time read from /proc over a window (default 60 s). A Pi room controller sits idle most of
//! its life; the target is < 0.5 % of one core.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rumqttc::QoS;

use crate::mqtt::{free_port, mosquitto, publisher_named};

/// utime + stime of `pid`, in seconds.
pub fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name, which is in parentheses and may contain spaces.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| anyhow::anyhow!("odd /proc stat"))?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|x| x.parse().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|x| x.parse().ok()).unwrap_or(0.0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok(ticks / hz)
}

/// The release binary (`ZENEDGE_BIN`, else target/release/zenedge) running `config`; killed
/// on drop.
pub struct Child(pub std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn release_daemon(config: &std::path::Path) -> anyhow::Result<Child> {
    let bin = std::env::var("ZENEDGE_BIN").unwrap_or_else(|_| "target/release/zenedge".into());
    Ok(Child(
        Command::new(&bin)
            .arg("--config")
            .arg(config)
            .arg("run")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| anyhow::anyhow!("{bin}: {e} (cargo build --release first)"))?,
    ))
}

pub async fn run(base: PathBuf, window: Duration) -> anyhow::Result<()> {
    let _ = std::fs::remove_dir_all(&base);
    std::fs::create_dir_all(&base)?;
    let port = free_port()?;
    let _broker = mosquitto(&base, port).await?;
    let rx = crate::start_receiver(&base.join("arrivals.txt"))?;
    let admin = free_port()?;
    let mut devices = String::new();
    for i in 0..10 {
        devices += &format!(
            "[[devices]]\nid = \"d{i}\"\ntype = \"strike\"\ndriver = \"tasmota\"\ntopic = \"d{i}\"\n"
        );
    }
    let config = base.join("config.toml");
    std::fs::write(
        &config,
        format!(
            r#"[controller]
id = "edge-idle"
organization_id = "org"
meeting_space_id = "ms"
state_dir = "{state}"
[zencore]
webhook_url = "http://127.0.0.1:{rx}/hook"
secret = "bench-secret-of-thirty-two-bytes"
[inbound]
listen = "127.0.0.1:0"
[admin]
listen = "127.0.0.1:{admin}"
[mqtt]
host = "127.0.0.1"
port = {port}
[clock]
require_sync = false
{devices}"#,
            state = base.join("state").display(),
            rx = rx.port,
        ),
    )?;
    let child = release_daemon(&config)?;
    let pid = child.0.id();
    let client = publisher_named(port, "idle-devices", 20).await?;
    for i in 0..10 {
        client
            .publish(format!("tele/d{i}/LWT"), QoS::AtLeastOnce, true, "Online")
            .await?;
    }
    // Ready and every device reported online (debounce 5 s by default).
    let started = Instant::now();
    loop {
        // `/v1/devices` is served on the admin socket only.
        let online = reqwest::Client::builder()
            .unix_socket(base.join("state").join("admin.sock"))
            .build()?
            .get("http://zenedge/v1/devices")
            .send()
            .await
            .ok();
        let n = match online {
            Some(r) => r
                .json::<serde_json::Value>()
                .await
                .ok()
                .and_then(|v| {
                    v.as_array()
                        .map(|a| a.iter().filter(|d| d["online"] == true).count())
                })
                .unwrap_or(0),
            None => 0,
        };
        if n == 10 {
            break;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(60),
            "devices never came online"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Let the online events drain, then measure.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let c0 = cpu_seconds(pid)?;
    let t0 = Instant::now();
    tokio::time::sleep(window).await;
    let used = cpu_seconds(pid)? - c0;
    let secs = t0.elapsed().as_secs_f64();
    drop(child);
    crate::stop_receiver(rx)?;
    println!("| metric | value | target |");
    println!("|---|---|---|");
    println!(
        "| idle CPU, 10 MQTT devices online, {secs:.0} s (release binary) | {:.3} % of one core ({used:.2} s CPU) | < 0.5 % |",
        used / secs * 100.0
    );
    Ok(())
}
