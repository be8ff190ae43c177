//! `agent.toml`, the volunteer's configuration file: every flag of the `agent`
//! binary has a key (and flags override the file), plus `consent` and a
//! `[schedule]` with `[[schedule.window]]`s. [`load`] reads a file into
//! [`Settings`] and reports every error at once, each with the file, line and
//! key; [`Settings::or`] lays flags over a file, and [`Settings::builder`]
//! turns the result into an [`AgentBuilder`]. The SDK can read the same file.
//!
//! Values are written as people write them: durations `15s`, `500ms`, `2m`
//! (`humantime`); sizes `10GB`, `500KB`, `1GiB` and rates `2MB/s` (`bytesize`:
//! KB/MB/GB are powers of 1000, KiB/MiB/GiB of 1024; a plain integer is bytes).
//!
//! How every error is found at once: the document is parsed (all syntax errors
//! are reported together), then deserialized with `deny_unknown_fields`; each
//! serde error (an unknown key, a wrong type) names a span, the entry there is
//! removed and the rest is deserialized again, until it goes through. Values
//! serde cannot judge (a duration, a pin, a day name) are checked afterwards,
//! each with its own line. Messages never repeat a source line or the token.
//! That machinery (errors, the span-removal loop, units, the bounds) is the
//! `exitpool-config` crate's, shared with the gateway's `gateway.toml`.

use crate::meter::Period;
use crate::policy::PortRange;
use crate::schedule::{self, Action, Days, MonthlyCap, Schedule, Window};
use crate::udp::UdpLimits;
use crate::{Agent, AgentBuilder, ExitPolicy, Pin, TransportChoice};
use exitpool_config::{deserialize_all, read, sorted, Lines};
pub use exitpool_config::{
    parse_duration, parse_rate, parse_size, ConfigError, ConfigErrors, MAX_ERRORS, MAX_FILE_BYTES,
};
use exitpool_protocol::Secret;
use serde::Deserialize;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;
use toml::Spanned;

/// The environment variable that may hold the token instead of the file.
pub const TOKEN_ENV: &str = "EXITPOOL_AGENT_TOKEN";

/// What a configuration file or the flags say; `None` is "not said", so the
/// flags can be laid over the file ([`Settings::or`]).
#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// `gateway`: gateway tunnel addresses, `host:port`; empty is not said.
    pub gateways: Vec<String>,
    /// `transport`: quic, tcp or auto.
    pub transport: Option<TransportChoice>,
    /// `pin`: the gateway's certificate pin.
    pub pin: Option<Pin>,
    /// `token`: the enrolment token.
    pub token: Option<Secret>,
    /// `bind`: local IP for the tunnel and target connections.
    pub bind: Option<IpAddr>,
    /// `allow_private`: dial loopback and private targets (testing only).
    pub allow_private: Option<bool>,
    /// `state_dir`: where the agent keeps its id and usage.
    pub state_dir: Option<PathBuf>,
    /// `max_streams`: most relay streams at once.
    pub max_streams: Option<u32>,
    /// `max_rate`: bandwidth cap per direction, bytes per second.
    pub max_rate: Option<NonZeroU32>,
    /// `udp_max_flows`: most UDP flows at once per tunnel (0 turns UDP off).
    pub udp_max_flows: Option<u32>,
    /// `udp_packets_per_second`: most datagrams per second per UDP flow.
    pub udp_packets_per_second: Option<u32>,
    /// `udp_idle_timeout`: a UDP flow silent this long ends.
    pub udp_idle_timeout: Option<Duration>,
    /// `quota_bytes`: bytes (up + down) per `quota_period`.
    pub quota_bytes: Option<u64>,
    /// `quota_period`: day or month.
    pub quota_period: Option<Period>,
    /// `deny_ports`: ports never dialled.
    pub deny_ports: Option<Vec<PortRange>>,
    /// `allow_ports`: the only ports dialled.
    pub allow_ports: Option<Vec<PortRange>>,
    /// `status_listen`: where the JSON status endpoint listens.
    pub status_listen: Option<SocketAddr>,
    /// `status_token`: shows the device's id and addresses on the status
    /// endpoint to a request carrying it.
    pub status_token: Option<Secret>,
    /// `summary_interval` (flag `--summary-secs`): between log summaries.
    pub summary_interval: Option<Duration>,
    /// `keep_alive` (flag `--keep-alive-ms`): between tunnel keep-alives.
    pub keep_alive: Option<Duration>,
    /// `handshake_timeout` (flag `--handshake-timeout-ms`): per handshake step.
    pub handshake_timeout: Option<Duration>,
    /// `threads`: runtime worker threads (the binary's, not the library's).
    pub threads: Option<usize>,
    /// `consent`: the device owner agrees to share the connection.
    pub consent: Option<bool>,
    /// `[schedule]`: windows, their rate caps, the monthly cap.
    pub schedule: Option<Schedule>,
}

/// A file as read: its settings and what deserves a warning.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// What the file says.
    pub settings: Settings,
    /// Things that work but should not be so (a token in a world-readable file).
    pub warnings: Vec<String>,
}

/// Reads and checks the configuration file at `path` (what it says may be
/// incomplete: flags can add to it).
pub fn load(path: &Path) -> Result<Loaded, ConfigErrors> {
    let text = read(path)?;
    let settings = parse(&text, path)?;
    finish(path, settings, Vec::new())
}

/// Reads and checks the file at `path` as the volunteer binary runs from it
/// alone: as [`load`], and also a gateway, a pin, a token (unless
/// `token_elsewhere`, e.g. in [`TOKEN_ENV`]) and `consent = true` are needed.
pub fn load_complete(path: &Path, token_elsewhere: bool) -> Result<Loaded, ConfigErrors> {
    let text = read(path)?;
    let (settings, mut errors) = parse_partly(&text);
    let settings = settings.unwrap_or_default();
    let named =
        |errors: &[ConfigError], key: &str| errors.iter().any(|e| e.key.as_deref() == Some(key));
    for key in settings.missing() {
        if (key == "token" && token_elsewhere) || named(&errors, key) {
            continue;
        }
        let also = if key == "token" {
            format!(" (or in {TOKEN_ENV})")
        } else {
            String::new()
        };
        errors.push(ConfigError {
            line: None,
            key: Some(key.to_owned()),
            message: format!("missing; the agent needs it{also}"),
        });
    }
    if settings.consent != Some(true) && !named(&errors, "consent") {
        errors.push(ConfigError {
            line: None,
            key: Some("consent".to_owned()),
            message: CONSENT_MISSING.to_owned(),
        });
    }
    finish(path, settings, errors)
}

/// Why a file without `consent = true` starts no agent.
pub const CONSENT_MISSING: &str = "not given; the agent shares this device's connection only once its owner sets `consent = true`";

/// Parses and checks a configuration file's `text`; `path` names it in errors.
pub fn parse(text: &str, path: &Path) -> Result<Settings, ConfigErrors> {
    match parse_partly(text) {
        (Some(settings), errors) if errors.is_empty() => Ok(settings),
        (_, errors) => Err(sorted(path, errors)),
    }
}

/// The settings that could be read (`None` if serde could not read the file
/// whole) and every error.
fn parse_partly(text: &str) -> (Option<Settings>, Vec<ConfigError>) {
    let lines = Lines(text);
    // A type error quotes the value; the tokens' never are.
    let (model, errors) = deserialize_all::<FileModel>(text, &lines, |key| match key {
        "token" => Some("expected the token as a string".to_owned()),
        "status_token" => Some("expected the status token as a string".to_owned()),
        _ => None,
    });
    let mut check = Check { lines, errors };
    // What serde let through is checked too, so one run reports everything.
    let settings = model.map(|model| check.settings(model));
    (settings, check.errors)
}

/// The settings and their warnings, or every error.
fn finish(
    path: &Path,
    settings: Settings,
    errors: Vec<ConfigError>,
) -> Result<Loaded, ConfigErrors> {
    if !errors.is_empty() {
        return Err(sorted(path, errors));
    }
    let mut warnings = Vec::new();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let readable = std::fs::metadata(path).is_ok_and(|m| m.permissions().mode() & 0o004 != 0);
        if settings.token.is_some() && readable {
            warnings.push(format!(
                "{} holds the token and every user on this device can read it; `chmod o-r` it (or put the token in {TOKEN_ENV})",
                path.display()
            ));
        }
    }
    Ok(Loaded { settings, warnings })
}

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

/// The file as written: every key optional, values still text where the
/// checks below give better errors than serde would.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileModel {
    gateway: Option<Spanned<OneOrMany>>,
    transport: Option<Spanned<String>>,
    pin: Option<Spanned<String>>,
    token: Option<Spanned<String>>,
    bind: Option<Spanned<String>>,
    allow_private: Option<bool>,
    state_dir: Option<PathBuf>,
    max_streams: Option<Spanned<i64>>,
    max_rate: Option<Spanned<NumberOrText>>,
    udp_max_flows: Option<Spanned<i64>>,
    udp_packets_per_second: Option<Spanned<i64>>,
    udp_idle_timeout: Option<Spanned<String>>,
    quota_bytes: Option<Spanned<NumberOrText>>,
    quota_period: Option<Spanned<String>>,
    deny_ports: Option<Spanned<Ports>>,
    allow_ports: Option<Spanned<Ports>>,
    status_listen: Option<Spanned<String>>,
    status_token: Option<Spanned<String>>,
    summary_interval: Option<Spanned<String>>,
    keep_alive: Option<Spanned<String>>,
    handshake_timeout: Option<Spanned<String>>,
    threads: Option<Spanned<i64>>,
    consent: Option<bool>,
    schedule: Option<ScheduleModel>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScheduleModel {
    timezone: Option<Spanned<String>>,
    monthly_cap: Option<Spanned<NumberOrText>>,
    reset_day: Option<Spanned<i64>>,
    window: Option<Vec<Spanned<WindowModel>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WindowModel {
    name: Option<String>,
    days: Option<Spanned<String>>,
    start: Option<Spanned<String>>,
    end: Option<Spanned<String>>,
    max_rate: Option<Spanned<NumberOrText>>,
    paused: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged, expecting = "a string or a list of strings")]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
#[serde(
    untagged,
    expecting = "a number of bytes or a string such as \"10GB\" or \"2MB/s\""
)]
enum NumberOrText {
    Number(u64),
    Text(String),
}

#[derive(Debug, Deserialize)]
#[serde(
    untagged,
    expecting = "a string such as \"25,465,6000-6100\" or a list of ports and ranges"
)]
enum Ports {
    Text(String),
    List(Vec<PortItem>),
}

#[derive(Debug, Deserialize)]
#[serde(untagged, expecting = "a port number or a range such as \"6000-6100\"")]
enum PortItem {
    Number(u16),
    Text(String),
}

/// The checks after deserializing, collecting every error.
struct Check<'a> {
    lines: Lines<'a>,
    errors: Vec<ConfigError>,
}

impl Check<'_> {
    fn fail(&mut self, span: &Range<usize>, key: &str, message: impl Into<String>) {
        let error = ConfigError::at(&self.lines, Some(span), key, message.into());
        self.errors.push(error);
    }

    /// `parse` applied to a spanned value; an error is recorded under `key`.
    fn value<T, U>(
        &mut self,
        key: &str,
        value: Option<Spanned<T>>,
        parse: impl FnOnce(&T) -> Result<U, String>,
    ) -> Option<U> {
        let value = value?;
        match parse(value.get_ref()) {
            Ok(parsed) => Some(parsed),
            Err(message) => {
                self.fail(&value.span(), key, message);
                None
            }
        }
    }

    fn settings(&mut self, model: FileModel) -> Settings {
        let gateways = match model.gateway {
            Some(gateway) => {
                let span = gateway.span();
                let list = match gateway.into_inner() {
                    OneOrMany::One(one) => vec![one],
                    OneOrMany::Many(many) => many,
                };
                if list.is_empty() {
                    self.fail(&span, "gateway", "list at least one gateway, HOST:PORT");
                }
                if list.len() > crate::config::MAX_GATEWAYS {
                    self.fail(
                        &span,
                        "gateway",
                        format!("at most {} gateways", crate::config::MAX_GATEWAYS),
                    );
                }
                for gateway in &list {
                    if gateway
                        .rsplit_once(':')
                        .is_none_or(|(host, port)| host.is_empty() || port.parse::<u16>().is_err())
                    {
                        self.fail(&span, "gateway", format!("{gateway:?} is not HOST:PORT"));
                    }
                }
                list
            }
            None => Vec::new(),
        };
        let quota_bytes = self.value("quota_bytes", model.quota_bytes, |v| match v {
            NumberOrText::Number(n) => Ok(*n),
            NumberOrText::Text(text) => parse_size(text),
        });
        let schedule = model.schedule.and_then(|s| self.schedule(s));
        Settings {
            gateways,
            transport: self.value("transport", model.transport, |t| t.parse()),
            pin: self.value("pin", model.pin, |pin| {
                pin.parse::<Pin>().map_err(|_| {
                    "not a certificate pin; it is `sha256:` and 64 hex digits, as `gateway pin` prints it".to_owned()
                })
            }),
            token: self.value("token", model.token, |token| {
                if token.trim().is_empty() {
                    Err("the token is empty".to_owned())
                } else {
                    Ok(Secret(token.clone()))
                }
            }),
            bind: self.value("bind", model.bind, |ip| {
                ip.parse().map_err(|_| format!("{ip:?} is not an IP address"))
            }),
            allow_private: model.allow_private,
            state_dir: model.state_dir,
            max_streams: self.value("max_streams", model.max_streams, |n| {
                u32::try_from(*n)
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| format!("{n} is not a number of streams (1 or more)"))
            }),
            max_rate: self.value("max_rate", model.max_rate, rate),
            udp_max_flows: self.value("udp_max_flows", model.udp_max_flows, |n| {
                u32::try_from(*n)
                    .ok()
                    .filter(|n| *n <= MAX_UDP_FLOWS)
                    .ok_or_else(|| {
                        format!("{n} is not a number of UDP flows (0 turns UDP off, at most {MAX_UDP_FLOWS})")
                    })
            }),
            udp_packets_per_second: self.value(
                "udp_packets_per_second",
                model.udp_packets_per_second,
                |n| {
                    u32::try_from(*n)
                        .ok()
                        .filter(|n| *n > 0)
                        .ok_or_else(|| format!("{n} is not a number of datagrams a second (1 or more)"))
                },
            ),
            udp_idle_timeout: self.value("udp_idle_timeout", model.udp_idle_timeout, |d| {
                parse_udp_idle_timeout(d)
            }),
            quota_bytes,
            quota_period: self.value("quota_period", model.quota_period, |p| p.parse()),
            deny_ports: self.value("deny_ports", model.deny_ports, ports),
            allow_ports: self.value("allow_ports", model.allow_ports, ports),
            status_token: self.value("status_token", model.status_token, |token| {
                if token.trim().is_empty() {
                    Err("the status token is empty".to_owned())
                } else {
                    Ok(Secret(token.clone()))
                }
            }),
            status_listen: self.value("status_listen", model.status_listen, |addr| {
                addr.parse()
                    .map_err(|_| format!("{addr:?} is not IP:PORT, e.g. 127.0.0.1:9091"))
            }),
            summary_interval: self.value("summary_interval", model.summary_interval, |d| {
                parse_duration(d)
            }),
            keep_alive: self.value("keep_alive", model.keep_alive, |d| parse_duration(d)),
            handshake_timeout: self.value("handshake_timeout", model.handshake_timeout, |d| {
                parse_duration(d)
            }),
            threads: self.value("threads", model.threads, |n| {
                usize::try_from(*n)
                    .ok()
                    .filter(|n| *n <= 1024)
                    .ok_or_else(|| format!("{n} is not a number of threads (0 is one per core)"))
            }),
            consent: model.consent,
            schedule,
        }
    }

    fn schedule(&mut self, model: ScheduleModel) -> Option<Schedule> {
        let errors = self.errors.len();
        let time_zone = match model.timezone {
            Some(name) => self.value("schedule.timezone", Some(name), |name| {
                jiff::tz::TimeZone::get(name).map_err(|_| {
                    format!("{name:?} is not a time zone this device knows; use a name such as Europe/Berlin")
                })
            }),
            None => Some(jiff::tz::TimeZone::system()),
        };
        let cap_bytes = self.value("schedule.monthly_cap", model.monthly_cap, |v| match v {
            NumberOrText::Number(n) => Ok(*n),
            NumberOrText::Text(text) => parse_size(text),
        });
        let reset_day = self
            .value("schedule.reset_day", model.reset_day, |day| {
                i8::try_from(*day)
                    .ok()
                    .filter(|day| (1..=31).contains(day))
                    .ok_or_else(|| format!("{day} is not a day of the month (1 to 31)"))
            })
            .unwrap_or(1);
        let windows = model.window.unwrap_or_default();
        if windows.len() > schedule::MAX_WINDOWS {
            self.errors.push(ConfigError {
                line: None,
                key: Some("schedule.window".into()),
                message: format!("at most {} windows", schedule::MAX_WINDOWS),
            });
        }
        let windows: Vec<Window> = windows
            .into_iter()
            .take(schedule::MAX_WINDOWS)
            .enumerate()
            .filter_map(|(i, window)| self.window(i + 1, window))
            .collect();
        (self.errors.len() == errors).then(|| Schedule {
            windows,
            time_zone: time_zone.expect("no error, so parsed"),
            monthly_cap: cap_bytes.map(|bytes| MonthlyCap { bytes, reset_day }),
        })
    }

    fn window(&mut self, number: usize, model: Spanned<WindowModel>) -> Option<Window> {
        let span = model.span();
        let model = model.into_inner();
        let key = |field: &str| format!("schedule.window[{number}].{field}");
        let errors = self.errors.len();
        let days = match model.days {
            Some(days) => self.value(&key("days"), Some(days), |d| d.parse::<Days>()),
            None => Some(Days::ALL),
        };
        let mut time = |field: &str, value: Option<Spanned<String>>| match value {
            Some(value) => self.value(&key(field), Some(value), |t| schedule::parse_time(t)),
            None => {
                self.fail(
                    &span,
                    &key(field),
                    "a window needs a start and an end, HH:MM",
                );
                None
            }
        };
        let start = time("start", model.start);
        let end = time("end", model.end);
        let max_rate = self.value(&key("max_rate"), model.max_rate, rate);
        let action = match (model.paused.unwrap_or(false), max_rate) {
            (true, Some(_)) => {
                self.fail(&span, &key("paused"), "a paused window has no max_rate");
                Action::Pause
            }
            (true, None) => Action::Pause,
            (false, max_rate) => Action::Share { max_rate },
        };
        if self.errors.len() > errors {
            return None;
        }
        Some(Window {
            name: model.name.unwrap_or_else(|| format!("window {number}")),
            days: days?,
            start: start?,
            end: end?,
            action,
        })
    }
}

/// Most UDP flows per tunnel a file or flag may ask for: each holds a socket
/// and two small queues at the exit.
pub const MAX_UDP_FLOWS: u32 = 65_536;

/// A UDP flow's idle timeout, as written (`30s`, `2m`): at least one second,
/// at most a day, so a flow's socket is always given back.
pub fn parse_udp_idle_timeout(text: &str) -> Result<Duration, String> {
    let timeout = parse_duration(text)?;
    if !(Duration::from_secs(1)..=Duration::from_secs(86_400)).contains(&timeout) {
        return Err(format!(
            "{text:?}: a UDP idle timeout is between 1s and 24h"
        ));
    }
    Ok(timeout)
}

fn rate(value: &NumberOrText) -> Result<NonZeroU32, String> {
    match value {
        NumberOrText::Number(n) => parse_rate(&n.to_string()),
        NumberOrText::Text(text) => parse_rate(text),
    }
}

fn ports(value: &Ports) -> Result<Vec<PortRange>, String> {
    let items: Vec<String> = match value {
        Ports::Text(text) => text.split(',').map(|s| s.trim().to_owned()).collect(),
        Ports::List(list) => list
            .iter()
            .map(|item| match item {
                PortItem::Number(n) => n.to_string(),
                PortItem::Text(text) => text.trim().to_owned(),
            })
            .collect(),
    };
    items
        .iter()
        .map(|item| {
            item.parse::<PortRange>()
                .map_err(|e| format!("{item:?}: {e}"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const PIN: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000000";

    fn errors(text: &str) -> Vec<ConfigError> {
        parse(text, Path::new("agent.toml")).unwrap_err().errors
    }

    #[test]
    fn a_full_file_parses_with_units() {
        let text = format!(
            r#"
gateway = ["gw1.example.net:4433", "gw2.example.net:4433"]
pin = "{PIN}"
token = "t0ken"
transport = "tcp"
max_rate = "2MB/s"
quota_bytes = "10GB"
quota_period = "month"
deny_ports = [25, "6000-6100"]
summary_interval = "2m"
keep_alive = "500ms"
handshake_timeout = "15s"
consent = true

[schedule]
timezone = "UTC"
monthly_cap = "1GiB"
reset_day = 15

[[schedule.window]]
name = "evening"
days = "daily"
start = "17:00"
end = "23:00"
max_rate = "500KB/s"

[[schedule.window]]
days = "mon-fri"
start = "09:00"
end = "17:00"
paused = true
"#
        );
        let settings = parse(&text, Path::new("agent.toml")).unwrap();
        assert_eq!(settings.gateways.len(), 2);
        assert_eq!(settings.max_rate.unwrap().get(), 2_000_000);
        assert_eq!(settings.quota_bytes, Some(10_000_000_000));
        assert_eq!(settings.summary_interval, Some(Duration::from_secs(120)));
        assert_eq!(settings.keep_alive, Some(Duration::from_millis(500)));
        assert_eq!(settings.transport, Some(TransportChoice::Tcp));
        let schedule = settings.schedule.unwrap();
        assert_eq!(
            schedule.monthly_cap,
            Some(MonthlyCap {
                bytes: 1 << 30,
                reset_day: 15
            })
        );
        assert_eq!(
            schedule.windows[0].action,
            Action::Share {
                max_rate: NonZeroU32::new(500_000)
            }
        );
        assert_eq!(schedule.windows[1].name, "window 2");
        assert_eq!(schedule.windows[1].action, Action::Pause);
    }

    #[test]
    fn every_error_is_reported_at_once_with_its_line_and_key() {
        let text = "gateway = \"gw:4433\"\nmax_rat = 5\nkeep_alive = \"soon\"\nmax_streams = \"many\"\n[schedule]\nreset_day = 40\nfoo = 1\n[[schedule.window]]\nstart = \"9am\"\n";
        let errors = errors(text);
        let found: Vec<(Option<usize>, Option<&str>)> =
            errors.iter().map(|e| (e.line, e.key.as_deref())).collect();
        assert_eq!(
            found,
            vec![
                (Some(2), Some("max_rat")),
                (Some(3), Some("keep_alive")),
                (Some(4), Some("max_streams")),
                (Some(6), Some("schedule.reset_day")),
                (Some(7), Some("schedule.foo")),
                (Some(8), Some("schedule.window[1].end")),
                (Some(9), Some("schedule.window[1].start")),
            ],
            "{errors:#?}"
        );
        assert!(
            errors[0].message.starts_with("unknown key `max_rat`"),
            "{errors:#?}"
        );
    }

    #[test]
    fn syntax_errors_and_the_token_are_never_echoed() {
        let errors = errors("token = 123456789\n");
        assert_eq!(errors[0].key.as_deref(), Some("token"));
        assert!(!errors[0].message.contains("123456789"), "{errors:?}");
        let errors = errors_of_syntax();
        assert!(errors.iter().all(|e| e.line == Some(2)), "{errors:?}");
    }

    fn errors_of_syntax() -> Vec<ConfigError> {
        errors("pin = \"x\"\ntoken = \"s3cret\n")
    }

    #[test]
    fn the_bounds_hold_against_huge_files() {
        let mut text = String::from("[schedule]\n");
        for _ in 0..=schedule::MAX_WINDOWS {
            text.push_str("[[schedule.window]]\nstart = \"09:00\"\nend = \"17:00\"\n");
        }
        let found = errors(&text);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].key.as_deref(), Some("schedule.window"));
        // One unknown key per line: the report stops at MAX_ERRORS.
        let text: String = (0..200).map(|i| format!("unknown_{i} = 1\n")).collect();
        assert_eq!(errors(&text).len(), MAX_ERRORS);
        let dir = std::env::temp_dir().join(format!("exitpool-config-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        let big = dir.join("agent.toml");
        std::fs::write(&big, "#".repeat(MAX_FILE_BYTES as usize + 1)).unwrap();
        let refused = load(&big).unwrap_err();
        assert!(refused.errors[0].message.contains("more than"), "{refused}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn the_udp_limits_are_read_and_checked() {
        let text = "udp_max_flows = 0\nudp_packets_per_second = 50\nudp_idle_timeout = \"2m\"\n";
        let settings = parse(text, Path::new("agent.toml")).unwrap();
        let limits = settings.udp_limits();
        assert_eq!(limits.max_flows, 0);
        assert_eq!(limits.packets_per_second, 50);
        assert_eq!(limits.idle_timeout, Duration::from_secs(120));
        assert_eq!(Settings::default().udp_limits(), UdpLimits::default());
        let text = "udp_max_flows = -1\nudp_packets_per_second = 0\nudp_idle_timeout = \"10ms\"\n";
        let found: Vec<_> = errors(text)
            .into_iter()
            .map(|e| (e.line, e.key.unwrap_or_default()))
            .collect();
        assert_eq!(
            found,
            vec![
                (Some(1), "udp_max_flows".to_owned()),
                (Some(2), "udp_packets_per_second".to_owned()),
                (Some(3), "udp_idle_timeout".to_owned()),
            ]
        );
    }

    #[test]
    fn flags_override_the_file() {
        let file = parse(
            &format!("gateway = \"a:1\"\npin = \"{PIN}\"\nmax_streams = 5\nthreads = 2\n"),
            Path::new("agent.toml"),
        )
        .unwrap();
        let flags = Settings {
            gateways: vec!["b:2".into()],
            max_streams: Some(9),
            ..Settings::default()
        };
        let merged = flags.or(file);
        assert_eq!(merged.gateways, vec!["b:2".to_owned()]);
        assert_eq!((merged.max_streams, merged.threads), (Some(9), Some(2)));
        assert_eq!(merged.missing(), vec!["token"]);
    }
}
