//! ZenEdge: the edge agent for meeting-room door hardware.
//!
//! Sources (devices, the operator) turn what happens into events; the [`store`] keeps every
//! event durably; [`delivery`] sends each to ZenCore as a signed webhook, at least once and in
//! order per device. See ARCHITECTURE.md for the code map and the invariants.

pub mod access;
pub mod admin;
pub mod audit;
pub mod audit_log;
pub mod broker;
pub mod channel;
pub mod cli;
pub mod clock;
pub mod config;
pub mod daemon;
pub mod delivery;
pub mod demo;
pub mod devices;
pub mod doctor;
pub mod event;
pub mod inbound;
pub mod logging;
pub mod mqtt;
pub mod record;
pub mod rooms;
pub mod runtime;
pub mod schedule;
pub mod serial;
pub mod serve;
pub mod signing;
pub mod store;
pub mod systemd;
pub mod telemetry;
pub mod wire;

/// Caps glibc's malloc arenas at two. By default glibc gives each thread that allocates its own
/// arena, and on a 4-core Pi running tokio, the store's writer and blocking tasks, that adds tens
/// of MiB of resident memory that is never returned. Two arenas keep RSS flat at no measurable
/// cost to throughput (see BENCHMARKS.md). Call it before starting threads.
pub fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tuning; it is called before other threads exist.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}
