//! systemd integration: `READY=1` once the daemon really serves, `STATUS=` lines an operator
//! sees in `systemctl status`, `WATCHDOG=1` only while the critical loops go round, and
//! `STOPPING=1` on the way down. Every call is a no-op when not started by systemd.

use std::sync::atomic::Ordering;
use std::time::Duration;

use sd_notify::NotifyState;
use tokio::sync::watch;

use crate::telemetry::{events as t, liveness, InternalEvent};

fn notify(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(false, states) {
        t::SystemdNotifyFailed { error: &e }.emit();
    }
}

pub fn ready(status: &str) {
    notify(&[NotifyState::Ready, NotifyState::Status(status)]);
}

pub fn status(status: &str) {
    notify(&[NotifyState::Status(status)]);
}

pub fn reloading() {
    notify(&[
        NotifyState::Reloading,
        NotifyState::Status("reloading the config"),
    ]);
}

pub fn stopping() {
    notify(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}

/// Pets the watchdog at half its interval while both the delivery loop and the device loop have
/// gone round since the last check; a wedged loop lets systemd restart the service.
pub async fn watchdog(mut stop: watch::Receiver<bool>) {
    let mut usec = 0;
    if !sd_notify::watchdog_enabled(false, &mut usec) || usec == 0 {
        return;
    }
    let interval = Duration::from_micros(usec) / 2;
    let beats = || {
        let l = liveness();
        (
            l.delivery.load(Ordering::Relaxed),
            l.devices.load(Ordering::Relaxed),
        )
    };
    let mut last = beats();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let now = beats();
        if now.0 > last.0 && now.1 > last.1 {
            notify(&[NotifyState::Watchdog]);
        } else {
            t::WatchdogWithheld {
                delivery_alive: now.0 > last.0,
                devices_alive: now.1 > last.1,
            }
            .emit();
        }
        last = now;
    }
}
