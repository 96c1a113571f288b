//! The embedded MQTT broker (rumqttd) for `zenedge demo` and for `[mqtt] embedded = true`:
//! a single-room controller whose devices talk to the Pi directly can run without mosquitto.
//!
//! Limits, as documented in the README: sessions and retained messages live in memory, so a
//! restart of ZenEdge loses them (devices re-announce themselves on reconnect; QoS 1 messages
//! sent while ZenEdge was down are lost); no TLS. With `mqtt.username` and `mqtt.password` set
//! it admits only that login (ZenEdge's own and the devices'); the config refuses an embedded
//! broker off loopback without them.

use std::net::SocketAddr;

/// Whether this build has the embedded broker (the `embedded-broker` cargo feature, on by
/// default).
pub const AVAILABLE: bool = cfg!(feature = "embedded-broker");

/// Without the `embedded-broker` feature there is no broker to start.
#[cfg(not(feature = "embedded-broker"))]
pub fn start(_listen: SocketAddr, _login: Option<(String, String)>) -> anyhow::Result<()> {
    anyhow::bail!(
        "this zenedge was built without the embedded MQTT broker (cargo feature `embedded-broker`): \
         use an external broker such as mosquitto"
    )
}

/// Starts the broker on `listen` in its own thread; it runs until the process ends. `login`:
/// the one username and password it admits (anonymous clients are refused); None admits anyone.
#[cfg(feature = "embedded-broker")]
pub fn start(listen: SocketAddr, login: Option<(String, String)>) -> anyhow::Result<()> {
    use std::collections::HashMap;
    let mut v4 = HashMap::new();
    v4.insert(
        "zenedge".to_string(),
        rumqttd::ServerSettings {
            name: "zenedge".into(),
            listen,
            tls: None,
            next_connection_delay_ms: 1,
            connections: rumqttd::ConnectionSettings {
                connection_timeout_ms: 60_000,
                max_payload_size: 256 * 1024,
                max_inflight_count: 100,
                auth: login.map(|(user, password)| HashMap::from([(user, password)])),
                external_auth: None,
                dynamic_filters: true,
            },
        },
    );
    let config = rumqttd::Config {
        id: 0,
        router: rumqttd::RouterConfig {
            max_connections: 100,
            max_outgoing_packet_count: 200,
            max_segment_size: 1 << 20,
            max_segment_count: 10,
            ..Default::default()
        },
        v4: Some(v4),
        ..Default::default()
    };
    let mut broker = rumqttd::Broker::new(config);
    std::thread::Builder::new()
        .name("mqtt-broker".into())
        .spawn(move || {
            if let Err(e) = broker.start() {
                use crate::telemetry::InternalEvent;
                crate::telemetry::events::EmbeddedBrokerStopped { error: &e }.emit();
            }
        })?;
    Ok(())
}
