//! The controller clock's I/O shell: the system time and kernel sync state, the floor persisted
//! in the store. What to believe is decided by the pure `access::read_clock`.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::access::{read_clock, ClockFloor, ClockReading, ClockStatus};
use crate::event::Millis;
use crate::telemetry::{events::ClockFloorLowered, InternalEvent};

/// The controller clock with its persisted floor, shared by the inbound endpoint and the
/// credential path.
pub struct Clock {
    store: crate::store::Store,
    require_sync: bool,
    floor: AtomicU64,
}

/// The floor is written to the store at most this often (it only needs to be roughly current:
/// its job is to catch a clock that jumped back by hours or years).
const FLOOR_STEP: std::time::Duration = std::time::Duration::from_secs(60);

fn system_clock() -> (Millis, bool) {
    (Millis::now(), system_synchronised())
}

impl Clock {
    pub fn new(
        store: crate::store::Store,
        require_sync: bool,
    ) -> Result<Clock, crate::store::StoreError> {
        let floor = store
            .record::<ClockFloor>(ClockFloor::KEY)?
            .map_or(Millis(0), |f| f.0);
        Ok(Clock {
            store,
            require_sync,
            floor: AtomicU64::new(floor.0),
        })
    }

    /// Reads the clock, raising the persisted floor while the clock is trusted and lowering it
    /// to a synchronised clock below it.
    pub fn read(&self) -> ClockReading {
        let floor = Millis(self.floor.load(Ordering::Relaxed));
        let (system, synced) = system_clock();
        let reading = read_clock(system, floor, synced, self.require_sync);
        if reading.floor < floor {
            // Only the reader that wins the exchange logs and writes: one line per lowering.
            if self
                .floor
                .compare_exchange(
                    floor.0,
                    reading.floor.0,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
            {
                ClockFloorLowered {
                    from: &floor.rfc3339(),
                    to: &reading.floor.rfc3339(),
                    by: "synchronised clock",
                }
                .emit();
                self.persist(reading.floor, true);
            }
        } else if reading.trusted && reading.now >= floor.saturating_add(FLOOR_STEP) {
            self.floor.store(reading.now.0, Ordering::Relaxed);
            self.persist(reading.now, false);
        }
        reading
    }

    /// Writes the floor: raised lazily (it only needs to be roughly current), or set lower.
    fn persist(&self, to: Millis, lower: bool) {
        let mut c = crate::store::Commit::lazy();
        c.step(move |tx| {
            let cur = tx
                .get::<ClockFloor>(ClockFloor::KEY)?
                .map_or(Millis(0), |f| f.0);
            tx.put(
                ClockFloor::KEY,
                &ClockFloor(if lower { to } else { cur.max(to) }),
            )
        });
        self.store.submit(c);
    }

    /// An operator's repair (`zenedge clock --reset-floor`): the floor goes down to the current
    /// system clock, durably. Returns the reading before and after.
    pub async fn reset_floor(
        &self,
    ) -> Result<(ClockReading, ClockReading), crate::store::StoreError> {
        let before = self.read();
        let to = before.system.min(before.floor);
        let mut c = crate::store::Commit::new();
        c.step(move |tx| tx.put(ClockFloor::KEY, &ClockFloor(to)));
        self.store.commit(c).await?;
        self.floor.store(to.0, Ordering::Relaxed);
        if to < before.floor {
            ClockFloorLowered {
                from: &before.floor.rfc3339(),
                to: &to.rfc3339(),
                by: "operator reset",
            }
            .emit();
        }
        Ok((before, self.read()))
    }

    pub fn status(&self) -> ClockStatus {
        ClockStatus::of(&self.read(), self.require_sync)
    }
}

/// The clock as a stopped daemon would find it: the system clock against the stored floor.
pub fn status_from_store(
    store: &crate::store::Store,
    require_sync: bool,
) -> Result<ClockStatus, crate::store::StoreError> {
    let floor = store
        .record::<ClockFloor>(ClockFloor::KEY)?
        .map_or(Millis(0), |f| f.0);
    let (system, synced) = system_clock();
    Ok(ClockStatus::of(
        &read_clock(system, floor, synced, require_sync),
        require_sync,
    ))
}

/// Whether the kernel says the clock is NTP-synchronised (adjtimex: not `TIME_ERROR`, no
/// `STA_UNSYNC`). False where it cannot be asked.
pub fn system_synchronised() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: adjtimex with modes = 0 only reads the kernel's clock state into `t`.
        let mut t: libc::timex = unsafe { std::mem::zeroed() };
        let state = unsafe { libc::adjtimex(&mut t) };
        state >= 0 && state != libc::TIME_ERROR && t.status & libc::STA_UNSYNC == 0
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}
