//! Supervision of the adapters that are not essential on their own (the inbound endpoint, the
//! admin API, housekeeping): one that fails — returns an error, returns when no stop was asked
//! for, or panics — is reported and started again with backoff, instead of leaving the daemon
//! running without it. The essential ones (the runtime loop, delivery) are watched by the daemon,
//! which ends the process non-zero when one stops (systemd restarts it).

use std::future::Future;
use std::time::Duration;

use tokio::sync::watch;

use crate::telemetry::{events as t, InternalEvent};

/// When to start a failed adapter again: doubling delays, back to the first after a long run.
/// Pure: durations are passed in.
#[derive(Debug, Clone)]
pub struct Restarts {
    first: Duration,
    max: Duration,
    next: Duration,
    count: u64,
}

impl Restarts {
    /// A run at least this long counts as healthy: the next failure starts from `first` again.
    pub const HEALTHY_RUN: Duration = Duration::from_secs(60);

    pub fn new(first: Duration, max: Duration) -> Restarts {
        Restarts {
            first,
            max,
            next: first,
            count: 0,
        }
    }

    /// The adapter failed after running for `ran`: how long to wait before starting it again.
    pub fn failed(&mut self, ran: Duration) -> Duration {
        if ran >= Self::HEALTHY_RUN {
            self.next = self.first;
        }
        let delay = self.next;
        self.next = (self.next * 2).min(self.max);
        self.count += 1;
        delay
    }

    /// Restarts so far.
    pub fn count(&self) -> u64 {
        self.count
    }
}

impl Default for Restarts {
    fn default() -> Restarts {
        Restarts::new(Duration::from_secs(1), Duration::from_secs(60))
    }
}

/// Runs `start(stop)` as a task until `stop` turns true, starting it again after `restarts`'s
/// delay whenever it ends on its own (an error, a return, a panic). Returns once stopped.
pub async fn supervise<F, Fut>(
    adapter: &'static str,
    mut stop: watch::Receiver<bool>,
    mut restarts: Restarts,
    mut start: F,
) where
    F: FnMut(watch::Receiver<bool>) -> Fut,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    loop {
        let began = std::time::Instant::now();
        let task = tokio::spawn(start(stop.clone()));
        let result = task.await;
        if *stop.borrow() {
            return;
        }
        let error = match result {
            Ok(Ok(())) => "it returned".to_owned(),
            Ok(Err(e)) => format!("{e:#}"),
            Err(e) if e.is_panic() => "it panicked".to_owned(),
            Err(e) => e.to_string(),
        };
        let delay = restarts.failed(began.elapsed());
        t::AdapterRestarting {
            adapter,
            error: &error,
            retry_in_ms: delay.as_millis() as u64,
            restarts: restarts.count(),
        }
        .emit();
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    #[test]
    fn restarts_back_off_and_start_over_after_a_healthy_run() {
        let ms = Duration::from_millis;
        let mut r = Restarts::new(ms(100), ms(1_000));
        let short = ms(10);
        let delays: Vec<u128> = (0..6).map(|_| r.failed(short).as_millis()).collect();
        assert_eq!(delays, vec![100, 200, 400, 800, 1_000, 1_000]);
        assert_eq!(r.failed(Restarts::HEALTHY_RUN), ms(100));
        assert_eq!(r.failed(short), ms(200));
        assert_eq!(r.count(), 8);
    }

    #[tokio::test]
    async fn an_adapter_that_panics_or_fails_is_started_again_until_the_stop() {
        let (stop_tx, stop_rx) = watch::channel(false);
        let starts = Arc::new(AtomicU32::new(0));
        let (running_tx, mut running_rx) = tokio::sync::mpsc::unbounded_channel();
        let counted = starts.clone();
        let supervisor = tokio::spawn(supervise(
            "test",
            stop_rx,
            Restarts::new(Duration::from_millis(1), Duration::from_millis(5)),
            move |mut stop: watch::Receiver<bool>| {
                let n = counted.fetch_add(1, Ordering::SeqCst);
                let running = running_tx.clone();
                async move {
                    match n {
                        0 => panic!("the first run dies"),
                        1 => anyhow::bail!("the second run fails"),
                        2 => Ok(()),
                        _ => {
                            let _ = running.send(n);
                            let _ = stop.wait_for(|s| *s).await;
                            Ok(())
                        }
                    }
                }
            },
        ));
        // The fourth start is the one that stays up.
        assert_eq!(running_rx.recv().await, Some(3));
        stop_tx.send_replace(true);
        supervisor.await.unwrap();
        assert_eq!(
            starts.load(Ordering::SeqCst),
            4,
            "not started again after the stop"
        );
    }
}
