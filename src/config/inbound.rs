//! `[inbound]`: where ZenCore's signed commands are served (DESIGN section 2), and with which
//! secrets they are verified.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use super::Secret;

/// `inbound.listen`: the address to serve ZenCore's commands on, or `""` for no listening
/// socket at all (commands then come only over the command channel, DESIGN section 2b).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listen(pub Option<SocketAddr>);

impl fmt::Display for Listen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(addr) => addr.fmt(f),
            None => f.write_str("\"\""),
        }
    }
}

impl<'de> Deserialize<'de> for Listen {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        if text.trim().is_empty() {
            return Ok(Listen(None));
        }
        text.trim().parse().map(|a| Listen(Some(a))).map_err(|_| {
            serde::de::Error::custom(format!(
                "`{text}` is not an address:port (or \"\" for no listening socket)"
            ))
        })
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InboundConfig {
    pub listen: Listen,
    pub(super) secret: Option<Secret>,
    pub secret_file: Option<PathBuf>,
    pub extra_secrets: Vec<Secret>,
    #[serde(with = "humantime_serde")]
    pub tolerance: Duration,
    /// Connections served at once; more wait in the kernel's backlog.
    pub max_connections: usize,
    /// Serve over HTTPS (rustls) with this certificate chain (PEM) and key.
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
    #[serde(skip)]
    pub(super) resolved: Option<Secret>,
}

impl InboundConfig {
    /// Every secret an inbound command may be signed with, the primary first. The primary
    /// defaults to `zencore`'s secret when `[inbound]` sets none.
    pub fn verifying_secrets(&self) -> Vec<Secret> {
        self.resolved
            .iter()
            .cloned()
            .chain(self.extra_secrets.iter().cloned())
            .collect()
    }
}

impl Default for InboundConfig {
    fn default() -> Self {
        InboundConfig {
            listen: Listen(Some(SocketAddr::from(([0, 0, 0, 0], 8787)))),
            secret: None,
            secret_file: None,
            extra_secrets: Vec::new(),
            tolerance: Duration::from_secs(300),
            max_connections: 64,
            tls_cert_file: None,
            tls_key_file: None,
            resolved: None,
        }
    }
}
