//! `[commands]` (DESIGN section 2b): how ZenCore's commands reach the controller — the inbound
//! endpoint, an outbound MQTT connection to ZenCore's broker, or both.

use std::path::PathBuf;

use serde::Deserialize;

use super::{ConfigError, Secret};

/// Which transports carry ZenCore's commands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// Only `POST /webhooks/zencore` on `inbound.listen`.
    #[default]
    Http,
    /// Only the command channel (ZenEdge connects out).
    Mqtt,
    Both,
}

impl Transport {
    pub fn channel(self) -> bool {
        matches!(self, Transport::Mqtt | Transport::Both)
    }

    pub fn http(self) -> bool {
        matches!(self, Transport::Http | Transport::Both)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Http => "http",
            Transport::Mqtt => "mqtt",
            Transport::Both => "both",
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CommandsConfig {
    pub transport: Transport,
    /// `mqtts://host[:port]`, `wss://host[:port]/path`; `mqtt://` and `ws://` for tests.
    pub url: Option<String>,
    /// Default `zencore/<organization_id>/<controller_id>`.
    pub topic_prefix: Option<String>,
    /// Default `zenedge-<controller_id>-commands`.
    pub client_id: Option<String>,
    pub username: Option<String>,
    password: Option<Secret>,
    pub password_file: Option<PathBuf>,
    pub ca_file: Option<PathBuf>,
    pub client_cert_file: Option<PathBuf>,
    pub client_key_file: Option<PathBuf>,
    /// ALPN protocols offered in the TLS handshake (`["x-amzn-mqtt-ca"]` for AWS IoT on 443).
    pub alpn: Vec<String>,
    /// An HTTP CONNECT proxy, `http://host:port`.
    pub proxy: Option<String>,
    #[serde(skip)]
    resolved_password: Option<Secret>,
    #[serde(skip)]
    broker: Option<Broker>,
    #[serde(skip)]
    proxy_addr: Option<(String, u16)>,
}

/// Where ZenCore's broker is, as `commands.url` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Broker {
    pub scheme: Scheme,
    pub host: String,
    pub port: u16,
    /// The WebSocket URL (`wss://host:port/path`); empty for MQTT over TCP.
    pub ws_url: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Mqtt,
    Mqtts,
    Ws,
    Wss,
}

impl Scheme {
    pub fn tls(self) -> bool {
        matches!(self, Scheme::Mqtts | Scheme::Wss)
    }

    pub fn websocket(self) -> bool {
        matches!(self, Scheme::Ws | Scheme::Wss)
    }
}

impl CommandsConfig {
    pub fn password(&self) -> Option<&Secret> {
        self.resolved_password.as_ref()
    }

    /// The broker, once validated (`None` for transport `http`).
    pub fn broker(&self) -> Option<&Broker> {
        self.broker.as_ref()
    }

    /// The proxy's host and port, once validated.
    pub fn proxy_addr(&self) -> Option<&(String, u16)> {
        self.proxy_addr.as_ref()
    }

    pub(super) fn resolve_secrets(&mut self) -> Result<(), ConfigError> {
        self.resolved_password = super::one_secret(
            "commands.password",
            self.password.take(),
            self.password_file.as_deref(),
        )?;
        Ok(())
    }

    /// Checks the keys and parses `url` and `proxy`.
    pub(super) fn validate(&mut self) -> Result<(), ConfigError> {
        if !self.transport.channel() {
            return Ok(());
        }
        let Some(url) = &self.url else {
            return Err(ConfigError::key(
                "commands.url",
                format!(
                    "missing: transport \"{}\" connects to ZenCore's broker at this URL",
                    self.transport.as_str()
                ),
            ));
        };
        let broker = parse_broker(url)?;
        if !self.alpn.is_empty() && !broker.scheme.tls() {
            return Err(ConfigError::key(
                "commands.alpn",
                "ALPN is part of TLS: use an mqtts:// or wss:// url",
            ));
        }
        if self.client_cert_file.is_some() != self.client_key_file.is_some() {
            return Err(ConfigError::key(
                "commands.client_cert_file",
                "client_cert_file and client_key_file go together",
            ));
        }
        if let Some(key) = &self.client_key_file {
            super::private_file("commands.client_key_file", key)?;
        }
        if (self.ca_file.is_some() || self.client_cert_file.is_some()) && !broker.scheme.tls() {
            return Err(ConfigError::key(
                "commands.url",
                "ca_file and client certificates need TLS: use an mqtts:// or wss:// url",
            ));
        }
        if self.resolved_password.is_some() && self.username.is_none() {
            return Err(ConfigError::key(
                "commands.username",
                "missing: a password is sent with a username",
            ));
        }
        if let Some(prefix) = &self.topic_prefix {
            if prefix.is_empty() || prefix.contains(['+', '#']) || prefix.ends_with('/') {
                return Err(ConfigError::key(
                    "commands.topic_prefix",
                    "must be a topic without wildcards and without a trailing `/`",
                ));
            }
        }
        if let Some(proxy) = &self.proxy {
            self.proxy_addr = Some(parse_proxy(proxy)?);
        }
        self.broker = Some(broker);
        Ok(())
    }
}

fn parse_broker(text: &str) -> Result<Broker, ConfigError> {
    let fail = |m: String| ConfigError::key("commands.url", m);
    let url = reqwest::Url::parse(text).map_err(|e| fail(format!("not a URL: {e}")))?;
    let (scheme, default_port) = match url.scheme() {
        "mqtts" => (Scheme::Mqtts, 8883),
        "wss" => (Scheme::Wss, 443),
        "mqtt" => (Scheme::Mqtt, 1883),
        "ws" => (Scheme::Ws, 80),
        other => {
            return Err(fail(format!(
                "scheme `{other}` is not one of mqtts://, wss:// (or mqtt://, ws:// for tests)"
            )))
        }
    };
    let host = url
        .host_str()
        .filter(|h| !h.is_empty())
        .ok_or_else(|| fail("has no host".into()))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = url.port().unwrap_or(default_port);
    let ws_url = if scheme.websocket() {
        let ws = if scheme.tls() { "wss" } else { "ws" };
        let path = match url.path() {
            "" => "/",
            p => p,
        };
        format!("{ws}://{}:{port}{path}", url.host_str().unwrap_or_default())
    } else {
        if !matches!(url.path(), "" | "/") {
            return Err(fail(
                "an mqtt:// or mqtts:// url has no path (use wss:// for a WebSocket path)".into(),
            ));
        }
        String::new()
    };
    Ok(Broker {
        scheme,
        host,
        port,
        ws_url,
    })
}

fn parse_proxy(text: &str) -> Result<(String, u16), ConfigError> {
    let fail = |m: &str| ConfigError::key("commands.proxy", m);
    let url = reqwest::Url::parse(text).map_err(|e| fail(&format!("not a URL: {e}")))?;
    if url.scheme() != "http" {
        return Err(fail("must be an http:// URL of an HTTP CONNECT proxy"));
    }
    if !url.username().is_empty() {
        return Err(fail("proxy credentials in the URL are not supported"));
    }
    let host = url
        .host_str()
        .ok_or_else(|| fail("has no host"))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    Ok((host, url.port().unwrap_or(8080)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_urls() {
        let b = parse_broker("mqtts://zencore.example").unwrap();
        assert_eq!(
            (b.scheme, b.host.as_str(), b.port),
            (Scheme::Mqtts, "zencore.example", 8883)
        );
        let b = parse_broker("wss://zencore.example/mqtt").unwrap();
        assert_eq!(b.port, 443);
        assert_eq!(b.ws_url, "wss://zencore.example:443/mqtt");
        let b = parse_broker("ws://127.0.0.1:9001").unwrap();
        assert_eq!(b.ws_url, "ws://127.0.0.1:9001/");
        let error = |text: &str| parse_broker(text).unwrap_err().to_string();
        assert!(error("https://x").contains("`https`"));
        assert!(error("mqtts://x/path").contains("no path"));
        assert!(parse_broker("mqtts://").is_err());
        assert_eq!(
            parse_proxy("http://proxy:3128").unwrap(),
            ("proxy".into(), 3128)
        );
        assert!(parse_proxy("https://proxy:3128").is_err());
    }
}
