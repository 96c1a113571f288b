//! The hub and the Zigbee2MQTT bridge: an "offline" is checked with the bridge's health check
//! before every Zigbee2MQTT device is taken offline with it.

use super::*;
use crate::telemetry::{events as t, InternalEvent};

impl Hub {
    /// Advances time: debounce, silence, action timeouts, relocks, the rooms' schedule.
    /// The Zigbee2MQTT bridge: offline takes every Zigbee2MQTT device with it — once the bridge
    /// has had [`BRIDGE_CHECK`] to answer a health check and has not. Anyone on the broker can
    /// publish (and retain) `bridge/state` "offline"; a bridge that answers is running.
    pub(super) fn bridge(&mut self, topic: &str, observation: Observation, now: Millis) -> Effects {
        let mut out = Effects::default();
        match observation {
            Observation::Availability { online: false, .. } => {
                if self.bridge_checks.contains_key(topic) {
                    return out;
                }
                let Some(ask) = drivers::bridge_health_check(topic) else {
                    return self.bridge_offline(topic, now);
                };
                t::BridgeAsked { topic }.emit();
                self.bridge_checks.insert(topic.to_owned(), now);
                out.push(Effect::Publish(ask));
            }
            Observation::Availability { online: true, .. } => {
                self.bridge_checks.remove(topic);
            }
            Observation::BridgeHealth { healthy } => {
                // The answer comes on the response topic; it is about its base's state topic.
                let Some(base) = topic.strip_suffix("/bridge/response/health_check") else {
                    return out;
                };
                let state_topic = format!("{base}/bridge/state");
                if self.bridge_checks.remove(&state_topic).is_some() {
                    self.counters
                        .bridge_offline_ignored
                        .fetch_add(1, Ordering::Relaxed);
                    t::BridgeOfflineIgnored {
                        topic: &state_topic,
                        healthy,
                    }
                    .emit();
                }
            }
            _ => {}
        }
        out
    }

    /// Every Zigbee2MQTT device of the bridge whose state topic is `topic` offline, reason
    /// `bridge_offline` (another Zigbee network's devices are not its business).
    pub(super) fn bridge_offline(&mut self, topic: &str, now: Millis) -> Effects {
        let mut out = Effects::default();
        let base = topic.strip_suffix("/bridge/state").unwrap_or(topic);
        let default = self.config.mqtt.zigbee2mqtt_base.clone();
        let ids: Vec<String> = self
            .config
            .devices
            .iter()
            .filter(|d| d.zigbee2mqtt().is_some_and(|z| z.base(&default) == base))
            .map(|d| d.id.clone())
            .collect();
        for id in ids {
            let t = self
                .presence
                .observe(&id, false, Reason::BridgeOffline, now);
            out.merge(self.transitions(t, now));
        }
        out
    }
}
