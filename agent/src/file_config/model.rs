//! `agent.toml` as serde reads it ([`FileModel`]): every key optional, values
//! still text where [`super::check`] gives better errors than serde would.

use serde::Deserialize;
use std::path::PathBuf;
use toml::Spanned;

/// The file as written: every key optional, values still text where the
/// checks give better errors than serde would.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileModel {
    pub(super) gateway: Option<Spanned<OneOrMany>>,
    pub(super) transport: Option<Spanned<String>>,
    pub(super) pin: Option<Spanned<String>>,
    pub(super) token: Option<Spanned<String>>,
    pub(super) bind: Option<Spanned<String>>,
    pub(super) allow_private: Option<bool>,
    pub(super) state_dir: Option<PathBuf>,
    pub(super) max_streams: Option<Spanned<i64>>,
    pub(super) max_rate: Option<Spanned<NumberOrText>>,
    pub(super) udp_max_flows: Option<Spanned<i64>>,
    pub(super) udp_packets_per_second: Option<Spanned<i64>>,
    pub(super) udp_idle_timeout: Option<Spanned<String>>,
    pub(super) quota_bytes: Option<Spanned<NumberOrText>>,
    pub(super) quota_period: Option<Spanned<String>>,
    pub(super) deny_ports: Option<Spanned<Ports>>,
    pub(super) allow_ports: Option<Spanned<Ports>>,
    pub(super) status_listen: Option<Spanned<String>>,
    pub(super) status_token: Option<Spanned<String>>,
    pub(super) summary_interval: Option<Spanned<String>>,
    pub(super) keep_alive: Option<Spanned<String>>,
    pub(super) handshake_timeout: Option<Spanned<String>>,
    pub(super) threads: Option<Spanned<i64>>,
    pub(super) consent: Option<bool>,
    pub(super) schedule: Option<ScheduleModel>,
}

/// `[schedule]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ScheduleModel {
    pub(super) timezone: Option<Spanned<String>>,
    pub(super) monthly_cap: Option<Spanned<NumberOrText>>,
    pub(super) reset_day: Option<Spanned<i64>>,
    pub(super) window: Option<Vec<Spanned<WindowModel>>>,
}

/// One `[[schedule.window]]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct WindowModel {
    pub(super) name: Option<String>,
    pub(super) days: Option<Spanned<String>>,
    pub(super) start: Option<Spanned<String>>,
    pub(super) end: Option<Spanned<String>>,
    pub(super) max_rate: Option<Spanned<NumberOrText>>,
    pub(super) paused: Option<bool>,
}

/// `gateway`: one address or a list.
#[derive(Debug, Deserialize)]
#[serde(untagged, expecting = "a string or a list of strings")]
pub(super) enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

/// A size or rate: a plain number of bytes, or text with a unit.
#[derive(Debug, Deserialize)]
#[serde(
    untagged,
    expecting = "a number of bytes or a string such as \"10GB\" or \"2MB/s\""
)]
pub(super) enum NumberOrText {
    Number(u64),
    Text(String),
}

/// `deny_ports` / `allow_ports`: a comma-separated string or a list.
#[derive(Debug, Deserialize)]
#[serde(
    untagged,
    expecting = "a string such as \"25,465,6000-6100\" or a list of ports and ranges"
)]
pub(super) enum Ports {
    Text(String),
    List(Vec<PortItem>),
}

/// One entry of a ports list.
#[derive(Debug, Deserialize)]
#[serde(untagged, expecting = "a port number or a range such as \"6000-6100\"")]
pub(super) enum PortItem {
    Number(u16),
    Text(String),
}
