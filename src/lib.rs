//! ZenEdge: the edge agent for meeting-room door hardware.
//!
//! Sources (devices, the operator) turn what happens into events; the [`store`] keeps every
//! event durably; [`delivery`] sends each to ZenCore as a signed webhook, at least once and in
//! order per device. See ARCHITECTURE.md for the code map and the invariants.

pub mod admin;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod delivery;
pub mod event;
pub mod logging;
pub mod signing;
pub mod store;
pub mod telemetry;
