//! The checks after deserializing (`agent.toml` -> [`Settings`]): every
//! value serde let through is judged here (a pin, a duration, a day name), and
//! every error is collected with its line and key, so one run reports them all.

use super::model::{
    FileModel, NumberOrText, OneOrMany, PortItem, Ports, ScheduleModel, WindowModel,
};
use super::settings::Settings;
use crate::policy::PortRange;
use crate::schedule::{self, Action, Days, MonthlyCap, Schedule, Window};
use crate::Pin;
use exitpool_config::Lines;
use exitpool_config::{parse_duration, parse_rate, parse_size, ConfigError};
use exitpool_protocol::Secret;
use std::num::NonZeroU32;
use std::ops::Range;
use std::time::Duration;
use toml::Spanned;

/// The checks after deserializing, collecting every error.
pub(super) struct Check<'a> {
    lines: Lines<'a>,
    errors: Vec<ConfigError>,
}

impl<'a> Check<'a> {
    /// A check of a file read into `lines`, after serde's `errors`.
    pub(super) fn new(lines: Lines<'a>, errors: Vec<ConfigError>) -> Check<'a> {
        Check { lines, errors }
    }

    /// What serde and the checks found.
    pub(super) fn into_errors(self) -> Vec<ConfigError> {
        self.errors
    }

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

    /// `gateway`: one `HOST:PORT` or a list of them, at most
    /// [`crate::config::MAX_GATEWAYS`].
    fn gateways(&mut self, gateway: Option<Spanned<OneOrMany>>) -> Vec<String> {
        let Some(gateway) = gateway else {
            return Vec::new();
        };
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

    /// The settings `model` gives, every value checked.
    pub(super) fn settings(&mut self, model: FileModel) -> Settings {
        let gateways = self.gateways(model.gateway);
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
