//! What `zenedge check-config` prints: the summary (never a secret) and the warnings about
//! settings that are allowed but probably a mistake.

use std::path::PathBuf;

use super::Config;

impl Config {
    /// What is allowed but probably a mistake, for `check-config` and the daemon's log.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        let remote = |host: &str| {
            !(host == "localhost"
                || host
                    .trim_matches(['[', ']'])
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback()))
        };
        if self.mqtt.password().is_some() && self.mqtt.ca_file.is_none() && remote(&self.mqtt.host)
        {
            out.push(format!(
                "mqtt.password is sent in clear to {} (no mqtt.ca_file): anyone on the network \
                 can read it; use TLS (mqtt.ca_file, port 8883)",
                self.mqtt.host
            ));
        }
        let served = self
            .inbound
            .listen
            .0
            .filter(|_| self.commands.transport.http());
        if self.inbound.tls_cert_file.is_none() && served.is_some_and(|a| !a.ip().is_loopback()) {
            out.push(format!(
                "inbound.listen {} is plain HTTP off loopback: grants (with their PIN hashes) \
                 cross the room network in clear; set inbound.tls_cert_file and tls_key_file",
                self.inbound.listen
            ));
        }
        if let Some(b) = self.commands.broker().filter(|b| !b.scheme.tls()) {
            if remote(&b.host) {
                out.push(format!(
                    "commands.url {} is not TLS: ZenCore's commands (grants with their PIN \
                     hashes) and the channel's password cross the network in clear; use \
                     mqtts:// or wss://",
                    self.commands.url.as_deref().unwrap_or_default()
                ));
            }
        }
        if self.inbound.listen.0.is_some() && !self.commands.transport.http() {
            out.push(format!(
                "inbound.listen {} is not served: commands.transport is \"mqtt\" (set \
                 inbound.listen = \"\" to say so, or transport \"both\")",
                self.inbound.listen
            ));
        }
        if let Ok(url) = reqwest::Url::parse(&self.zencore.webhook_url) {
            if url.scheme() == "http" && url.host_str().is_some_and(remote) {
                out.push(format!(
                    "zencore.webhook_url is plain http to {}: events (not the secret) cross the \
                     network in clear; use https://",
                    url.host_str().unwrap_or("?")
                ));
            }
        }
        for (i, d) in self.devices.iter().enumerate() {
            if d.is_door() && !d.can_hold() {
                out.push(format!(
                    "devices[{i}] `{}`: passage mode cannot hold this {} {} (the relay times its                      own pulse); a booking with unlock_during_meeting leaves it to credentials",
                    d.id,
                    d.driver().as_str(),
                    d.kind.as_str()
                ));
            }
        }
        out
    }

    /// A human summary for `zenedge check-config`; never shows a secret.
    pub fn summary(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let secret_source = |file: &Option<PathBuf>| match file {
            Some(f) => format!("from {}", f.display()),
            None => "inline".to_string(),
        };
        let _ = writeln!(
            s,
            "controller   {} (organization {}, meeting space {})",
            self.controller.id, self.controller.organization_id, self.controller.meeting_space_id
        );
        let _ = writeln!(s, "state_dir    {}", self.controller.state_dir.display());
        let _ = writeln!(
            s,
            "zencore      {} (timeout {}, secret {}, {} extra secret(s))",
            self.zencore.webhook_url,
            humantime::format_duration(self.zencore.timeout),
            secret_source(&self.zencore.secret_file),
            self.zencore.extra_secrets.len()
        );
        let d = &self.delivery;
        let _ = writeln!(
            s,
            "delivery     concurrency {}, backoff {}..{}, max_age {}, max_store_bytes {}",
            d.concurrency,
            humantime::format_duration(d.initial_backoff),
            humantime::format_duration(d.max_backoff),
            humantime::format_duration(d.max_age),
            d.max_store_bytes.0
        );
        let _ = writeln!(
            s,
            "inbound      {} (tolerance {}, {} secret(s))",
            self.inbound.listen,
            humantime::format_duration(self.inbound.tolerance),
            self.inbound.verifying_secrets().len()
        );
        if let Some(url) = self
            .commands
            .url
            .as_deref()
            .filter(|_| self.commands.transport.channel())
        {
            let _ = writeln!(
                s,
                "commands     transport {}, channel {} as {}{}",
                self.commands.transport.as_str(),
                url,
                crate::channel::client_id(self),
                self.commands
                    .proxy
                    .as_deref()
                    .map(|p| format!(" via proxy {p}"))
                    .unwrap_or_default()
            );
        }
        let _ = writeln!(s, "admin        {}", self.admin.listen);
        let _ = writeln!(
            s,
            "mqtt         {}:{} as {}",
            self.mqtt.host,
            self.mqtt.port,
            self.mqtt_client_id()
        );
        let _ = writeln!(s, "clock        require_sync = {}", self.clock.require_sync);
        let _ = writeln!(s, "devices      {}", self.devices.len());
        for d in &self.devices {
            let _ = writeln!(
                s,
                "  {:<20} {:<7} {}",
                d.id,
                d.kind.as_str(),
                d.driver().as_str()
            );
        }
        s
    }
}
