//! What the serial machines and the device hub say to each other: commands in, happenings
//! out. Pure data, below both the machines (`modbus`, `osdp`) and their I/O shell, so that no
//! machine imports from the shell.

use std::time::Duration;

use crate::wire::ActionError;

/// A command for a serial device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cmd {
    /// Unlock for `pulse` (an `access.unlock`'s `duration_s`), else the device's `pulse`.
    Unlock {
        pulse: Option<Duration>,
    },
    Lock,
    /// Unlock and stay unlocked until a `Lock` (passage mode): a relay held on, a reader's
    /// output set permanently on.
    Hold,
    /// LED and buzzer on a reader after an access decision.
    Feedback {
        granted: bool,
    },
}

/// Why a serial device went online or offline (the event's `reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkReason {
    PortOpened,
    PortClosed,
    PollReply,
    PollTimeout,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialKind {
    Pin,
    Card,
}

/// Why a serial command failed. The hub turns it into the action's `error`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SerialFailure {
    /// No answer within the retries.
    #[error("timeout")]
    Timeout,
    /// The port closed (unplugged) with the command waiting.
    #[error("port_closed")]
    PortClosed,
    /// The device is not online (an OSDP reader before or after its handshake).
    #[error("device_offline")]
    DeviceOffline,
    /// An OSDP reader refused it (osdp_NAK with this reason code).
    #[error("reader refused (NAK {0})")]
    Nak(u8),
    /// A Modbus exception answer (its code).
    #[error("modbus exception {0:#04x}")]
    ModbusException(u8),
    /// A reply of a kind the command does not expect (its code).
    #[error("unexpected reply {0:#04x}")]
    UnexpectedReply(u8),
}

impl SerialFailure {
    /// The action error ZenCore hears (`device.action_completed` `error`).
    pub fn action_error(&self) -> ActionError {
        match self {
            SerialFailure::Timeout => ActionError::Timeout,
            SerialFailure::PortClosed => ActionError::PortClosed,
            SerialFailure::DeviceOffline => ActionError::DeviceOffline,
            SerialFailure::Nak(_) => ActionError::Nak,
            SerialFailure::ModbusException(_) | SerialFailure::UnexpectedReply(_) => {
                ActionError::DeviceError
            }
        }
    }
}

/// What a serial machine reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Happening {
    Online(LinkReason),
    Offline(LinkReason),
    /// A command finished: written and confirmed by the device, or not.
    Done {
        cmd: Cmd,
        result: Result<(), SerialFailure>,
    },
    /// The relay's coil as the board reported it.
    Relay {
        on: bool,
    },
    /// A door contact (a board's discrete input, a reader's input) changed, or was first read.
    Contact {
        closed: bool,
    },
    /// A PIN typed (terminated by `#`) or a card read on a reader.
    Credential {
        kind: CredentialKind,
        value: String,
    },
    /// A card read that is not a card of the reader's format (a parity error, the wrong bit
    /// count): denied, never compared.
    CardUnreadable {
        error: String,
    },
}

/// One report to the hub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub device: String,
    pub happening: Happening,
}

/// What one step of a machine asks of its shell.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Step {
    pub send: Vec<Vec<u8>>,
    pub happened: Vec<Happening>,
}
