//! What settings do once read ([`Settings`]): laid over others (flags
//! over the file), the UDP limits and what is missing, and the agent builder
//! they make.

use super::settings::Settings;
use crate::meter::Period;
use crate::udp::UdpLimits;
use crate::{Agent, AgentBuilder, ExitPolicy};
use std::time::Duration;

impl Settings {
    /// These settings, with what they leave unsaid taken from `fallback`
    /// (flags `.or(file)`).
    pub fn or(self, fallback: Settings) -> Settings {
        Settings {
            gateways: if self.gateways.is_empty() {
                fallback.gateways
            } else {
                self.gateways
            },
            transport: self.transport.or(fallback.transport),
            pin: self.pin.or(fallback.pin),
            token: self.token.or(fallback.token),
            bind: self.bind.or(fallback.bind),
            allow_private: self.allow_private.or(fallback.allow_private),
            state_dir: self.state_dir.or(fallback.state_dir),
            max_streams: self.max_streams.or(fallback.max_streams),
            max_rate: self.max_rate.or(fallback.max_rate),
            udp_max_flows: self.udp_max_flows.or(fallback.udp_max_flows),
            udp_packets_per_second: self
                .udp_packets_per_second
                .or(fallback.udp_packets_per_second),
            udp_idle_timeout: self.udp_idle_timeout.or(fallback.udp_idle_timeout),
            quota_bytes: self.quota_bytes.or(fallback.quota_bytes),
            quota_period: self.quota_period.or(fallback.quota_period),
            deny_ports: self.deny_ports.or(fallback.deny_ports),
            allow_ports: self.allow_ports.or(fallback.allow_ports),
            status_listen: self.status_listen.or(fallback.status_listen),
            status_token: self.status_token.or(fallback.status_token),
            summary_interval: self.summary_interval.or(fallback.summary_interval),
            keep_alive: self.keep_alive.or(fallback.keep_alive),
            handshake_timeout: self.handshake_timeout.or(fallback.handshake_timeout),
            threads: self.threads.or(fallback.threads),
            consent: self.consent.or(fallback.consent),
            schedule: self.schedule.or(fallback.schedule),
        }
    }

    /// The UDP flow limits these settings give, the library's defaults
    /// where they say nothing.
    pub fn udp_limits(&self) -> UdpLimits {
        let defaults = UdpLimits::default();
        UdpLimits {
            max_flows: self.udp_max_flows.unwrap_or(defaults.max_flows),
            packets_per_second: self
                .udp_packets_per_second
                .unwrap_or(defaults.packets_per_second),
            idle_timeout: self.udp_idle_timeout.unwrap_or(defaults.idle_timeout),
        }
    }

    /// What is missing for an agent to start: a gateway, a pin, a token.
    pub fn missing(&self) -> Vec<&'static str> {
        let mut missing = Vec::new();
        if self.gateways.is_empty() {
            missing.push("gateway");
        }
        if self.pin.is_none() {
            missing.push("pin");
        }
        if self.token.is_none() {
            missing.push("token");
        }
        missing
    }

    /// An agent builder with these settings, on the library's defaults where
    /// they say nothing; `Err` names what is missing (see [`Settings::missing`]).
    /// The state directory is used as given (the binary supplies its default).
    pub fn builder(self) -> Result<AgentBuilder, Vec<&'static str>> {
        let missing = self.missing();
        let udp = self.udp_limits();
        let (Some(pin), Some(token), false) = (self.pin, self.token, self.gateways.is_empty())
        else {
            return Err(missing);
        };
        let mut gateways = self.gateways.into_iter();
        let first = gateways.next().expect("checked non-empty");
        let mut builder = Agent::builder(first, pin, token.0);
        for gateway in gateways {
            builder = builder.gateway(gateway);
        }
        let mut policy = ExitPolicy::new().allow_private(self.allow_private.unwrap_or(false));
        if let Some(ports) = self.deny_ports {
            policy = policy.with_denied_ports(ports);
        }
        if let Some(ports) = self.allow_ports {
            policy = policy.with_allowed_ports(ports);
        }
        builder = builder.policy(policy);
        if let Some(transport) = self.transport {
            builder = builder.transport(transport);
        }
        if let Some(bind) = self.bind {
            builder = builder.bind(bind);
        }
        if let Some(dir) = self.state_dir {
            builder = builder.state_dir(dir);
        }
        if let Some(streams) = self.max_streams {
            builder = builder.max_streams(streams);
        }
        if let Some(rate) = self.max_rate {
            builder = builder.max_rate(rate.get());
        }
        builder = builder.udp_limits(udp);
        if let Some(bytes) = self.quota_bytes {
            builder = builder.quota(bytes, self.quota_period.unwrap_or(Period::Month));
        }
        if let Some(addr) = self.status_listen {
            builder = builder.status_listen(addr);
        }
        if let Some(token) = self.status_token {
            builder = builder.status_token(token.0);
        }
        if let Some(every) = self.summary_interval {
            builder = builder.summary_interval(every.max(Duration::from_secs(1)));
        }
        if let Some(every) = self.keep_alive {
            builder = builder.keep_alive(every.max(Duration::from_millis(100)));
        }
        if let Some(timeout) = self.handshake_timeout {
            builder = builder.handshake_timeout(timeout.max(Duration::from_millis(100)));
        }
        if let Some(schedule) = self.schedule {
            builder = builder.schedule(schedule);
        }
        Ok(builder)
    }
}
