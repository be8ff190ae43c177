//! The SDK's configuration, as the app passes it to `exitpool_agent_new`: one
//! JSON object, checked whole before anything starts (unknown keys refused by
//! name), turned into an [`AgentBuilder`] with consent required; and the
//! limits object `exitpool_agent_set_limits` takes.

use exitpool_agent::{Agent, AgentBuilder, Period, Pin, TransportChoice};
use serde::Deserialize;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

/// Most gateways one configuration may list (the agent considers at most 64
/// addresses in all).
const MAX_GATEWAYS: usize = 16;

/// Parses `json`, with the path of the key at fault in the error (serde's own
/// message names it only for unknown and missing keys).
fn from_json<T: serde::de::DeserializeOwned>(json: &str) -> Result<T, String> {
    let mut reader = serde_json::Deserializer::from_str(json);
    serde_path_to_error::deserialize(&mut reader).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." {
            inner.to_string()
        } else {
            format!("{path}: {inner}")
        }
    })
}

/// The configuration JSON (see the header's `exitpool_agent_new`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigJson {
    /// `host:port` of each gateway of the fleet, at least one.
    gateways: Vec<String>,
    /// The gateway certificate's pin, `sha256:<hex>`.
    pin: String,
    /// The enrolment token.
    token: String,
    /// Where the device key, consent, usage and host report are kept.
    state_dir: PathBuf,
    #[serde(default)]
    limits: LimitsJson,
    max_streams: Option<u32>,
    bind: Option<IpAddr>,
    /// Permits loopback and private targets: for tests on one machine only.
    #[serde(default)]
    allow_private: bool,
    /// `quic`, `tcp` or `auto` (the default).
    transport: Option<String>,
    /// A local address for the JSON status endpoint (keep it on loopback).
    status_listen: Option<SocketAddr>,
    /// Software name and version reported to the gateway.
    software: Option<String>,
    /// How long live streams may finish when the agent stops, in milliseconds.
    drain_grace_ms: Option<u64>,
}

/// The owner's limits as JSON: `{"max_rate": bytes per second per direction,
/// "quota_bytes": bytes per period, "quota_period": "day" | "month"}`, each
/// optional (absent or 0: no limit).
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsJson {
    max_rate: Option<u32>,
    quota_bytes: Option<u64>,
    quota_period: Option<String>,
}

impl LimitsJson {
    /// Parses and checks a limits object.
    pub fn parse(json: &str) -> Result<LimitsJson, String> {
        let limits: LimitsJson = from_json(json).map_err(|e| format!("limits: {e}"))?;
        limits.check()?;
        Ok(limits)
    }

    fn check(&self) -> Result<(), String> {
        self.period().map(|_| ())
    }

    fn period(&self) -> Result<Period, String> {
        match &self.quota_period {
            None => Ok(Period::Day),
            Some(text) => text
                .parse()
                .map_err(|e| format!("limits.quota_period: {e}")),
        }
    }

    /// `builder` with these limits.
    pub fn apply(&self, mut builder: AgentBuilder) -> AgentBuilder {
        if let Some(rate) = self.max_rate.filter(|rate| *rate > 0) {
            builder = builder.max_rate(rate);
        }
        if let Some(quota) = self.quota_bytes.filter(|quota| *quota > 0) {
            // Checked when parsed.
            builder = builder.quota(quota, self.period().unwrap_or_default());
        }
        builder
    }
}

/// A checked configuration.
#[derive(Debug, Clone)]
pub struct SdkConfig {
    /// Everything but the limits, with consent required.
    pub builder: AgentBuilder,
    /// The limits in force at the next start.
    pub limits: LimitsJson,
    /// The state directory (consent and the report live there).
    pub state_dir: PathBuf,
}

impl SdkConfig {
    /// Parses and checks the configuration JSON. Errors name the key at fault
    /// and never repeat the token.
    pub fn parse(json: &str) -> Result<SdkConfig, String> {
        let config: ConfigJson = from_json(json).map_err(|e| format!("configuration: {e}"))?;
        let Some(first) = config.gateways.first() else {
            return Err("configuration: gateways: at least one `host:port` is needed".into());
        };
        if config.gateways.len() > MAX_GATEWAYS {
            return Err(format!(
                "configuration: gateways: {} listed, at most {MAX_GATEWAYS}",
                config.gateways.len()
            ));
        }
        let pin: Pin = config
            .pin
            .parse()
            .map_err(|e| format!("configuration: pin: {e}"))?;
        if config.token.is_empty() {
            return Err("configuration: token: empty".into());
        }
        if config.state_dir.as_os_str().is_empty() {
            return Err("configuration: state_dir: empty".into());
        }
        config
            .limits
            .check()
            .map_err(|e| format!("configuration: {e}"))?;
        let mut builder = Agent::builder(first.clone(), pin, config.token)
            .state_dir(config.state_dir.clone())
            .allow_private(config.allow_private)
            .require_consent(true);
        for gateway in &config.gateways[1..] {
            builder = builder.gateway(gateway.clone());
        }
        if let Some(transport) = &config.transport {
            let transport: TransportChoice = transport
                .parse()
                .map_err(|e| format!("configuration: transport: {e}"))?;
            builder = builder.transport(transport);
        }
        if let Some(streams) = config.max_streams {
            builder = builder.max_streams(streams);
        }
        if let Some(ip) = config.bind {
            builder = builder.bind(ip);
        }
        if let Some(addr) = config.status_listen {
            builder = builder.status_listen(addr);
        }
        if let Some(software) = config.software {
            builder = builder.software(software);
        }
        if let Some(ms) = config.drain_grace_ms {
            builder = builder.drain_grace(Duration::from_millis(ms));
        }
        Ok(SdkConfig {
            builder,
            limits: config.limits,
            state_dir: config.state_dir,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PIN: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000000";

    #[test]
    fn a_good_configuration_is_taken() {
        let json = format!(
            r#"{{"gateways":["127.0.0.1:4433"],"pin":"{PIN}","token":"t","state_dir":"/tmp/x",
               "limits":{{"max_rate":1000,"quota_bytes":5,"quota_period":"month"}},
               "transport":"quic","bind":"127.0.0.2","allow_private":true}}"#
        );
        let config = SdkConfig::parse(&json).unwrap();
        assert_eq!(config.builder.config().gateways, ["127.0.0.1:4433"]);
        let built = config.limits.apply(config.builder.clone());
        assert_eq!(built.config().limits.quota_bytes, Some(5));
        assert_eq!(built.config().limits.period, Period::Month);
    }

    #[test]
    fn bad_configurations_are_refused_by_key_without_the_token() {
        let cases = [
            (
                r#"{"gateways":[],"pin":"PIN","token":"secret-token","state_dir":"/x"}"#,
                "gateways",
            ),
            (
                r#"{"gateways":["a:1"],"pin":"nope","token":"secret-token","state_dir":"/x"}"#,
                "pin",
            ),
            (
                r#"{"gateways":["a:1"],"pin":"PIN","token":"secret-token","state_dir":"/x","colour":1}"#,
                "colour",
            ),
            (
                r#"{"gateways":["a:1"],"pin":"PIN","token":"secret-token","state_dir":"/x","transport":"udp"}"#,
                "transport",
            ),
            (
                r#"{"gateways":["a:1"],"pin":"PIN","token":"secret-token","state_dir":"/x","limits":{"quota_period":"week"}}"#,
                "quota_period",
            ),
            (
                r#"{"gateways":["a:1"],"pin":"PIN","token":"secret-token"}"#,
                "state_dir",
            ),
            (
                r#"{"gateways":["a:1"],"pin":"PIN","token":"secret-token","state_dir":"/x","limits":{"max_rate":"fast"}}"#,
                "limits.max_rate",
            ),
            ("not json", "configuration"),
        ];
        for (json, key) in cases {
            let error = SdkConfig::parse(&json.replace("PIN", PIN)).unwrap_err();
            assert!(error.contains(key), "{json}: {error}");
            assert!(!error.contains("secret-token"), "{error}");
        }
    }
}
