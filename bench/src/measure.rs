//! What the figures are made of: CPU time and memory of processes from /proc,
//! system limits and counters, and medians and percentiles.

use anyhow::{Context, Result};
use std::time::Duration;

/// Linux reports process CPU time in USER_HZ ticks, 100 per second on every
/// architecture the kernel exposes to user space.
const TICKS_PER_SECOND: f64 = 100.0;
pub const MIB: u64 = 1024 * 1024;
pub const GIB: f64 = (1u64 << 30) as f64;

/// utime + stime of a process (this one with `None`), in seconds.
pub fn cpu_seconds(pid: Option<u32>) -> Result<f64> {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/stat"),
        None => "/proc/self/stat".into(),
    };
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // The command name may contain spaces; fields are counted after its ')'.
    let rest = text
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("malformed stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Field 3 (state) is index 0, so utime (14) and stime (15) are 11 and 12.
    let utime: f64 = fields.get(11).context("no utime")?.parse()?;
    let stime: f64 = fields.get(12).context("no stime")?.parse()?;
    Ok((utime + stime) / TICKS_PER_SECOND)
}

/// CPU seconds used so far by this process, then by each of `pids`.
pub fn cpu_of(pids: &[u32]) -> Result<Vec<f64>> {
    std::iter::once(None)
        .chain(pids.iter().map(|&p| Some(p)))
        .map(cpu_seconds)
        .collect()
}

/// A `VmXxx:` line of /proc/PID/status, in KiB.
pub fn status_kib(pid: Option<u32>, key: &str) -> Result<u64> {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/status"),
        None => "/proc/self/status".into(),
    };
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    text.lines()
        .find_map(|line| line.strip_prefix(key).and_then(|r| r.strip_prefix(':')))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no {key} in {path}"))
}

/// Entries of a directory under /proc/PID: `fd` (open descriptors) or
/// `task` (threads).
pub fn proc_entries(pid: u32, dir: &str) -> Result<u64> {
    let path = format!("/proc/{pid}/{dir}");
    let entries = std::fs::read_dir(&path).with_context(|| format!("reading {path}"))?;
    Ok(entries.filter(|entry| entry.is_ok()).count() as u64)
}

/// A process's open descriptors by kind (`socket`, `pipe`,
/// `anon_inode:[eventpoll]`, or the file's path), to tell what a change in
/// their number is made of.
pub fn fd_kinds(pid: u32) -> Result<std::collections::BTreeMap<String, u64>> {
    let path = format!("/proc/{pid}/fd");
    let mut kinds = std::collections::BTreeMap::new();
    for entry in std::fs::read_dir(&path).with_context(|| format!("reading {path}"))? {
        let Ok(target) = std::fs::read_link(entry?.path()) else {
            continue;
        };
        let target = target.to_string_lossy().into_owned();
        let kind = match target.split_once(':') {
            Some((kind @ ("socket" | "pipe"), _)) => kind.to_owned(),
            _ => target,
        };
        *kinds.entry(kind).or_default() += 1;
    }
    Ok(kinds)
}

/// A process's sockets by inode, described from its /proc/PID/net tables
/// (`tcp 127.0.0.1:80 -> 127.0.0.2:4000 ESTABLISHED`), so a descriptor
/// more at the end of a soak can be told apart.
pub fn sockets(pid: u32) -> std::collections::BTreeMap<u64, String> {
    let mut inodes = std::collections::BTreeMap::new();
    if let Ok(entries) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
        for entry in entries.flatten() {
            let Ok(target) = std::fs::read_link(entry.path()) else {
                continue;
            };
            let target = target.to_string_lossy().into_owned();
            if let Some(inode) = target
                .strip_prefix("socket:[")
                .and_then(|rest| rest.strip_suffix(']'))
                .and_then(|inode| inode.parse::<u64>().ok())
            {
                inodes.insert(inode, format!("socket {inode} (not in tcp/udp/unix)"));
            }
        }
    }
    for table in ["tcp", "tcp6", "udp", "udp6"] {
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(remote), Some(state), Some(inode)) = (
                fields.get(1),
                fields.get(2),
                fields.get(3),
                fields.get(9).and_then(|i| i.parse::<u64>().ok()),
            ) else {
                continue;
            };
            if let Some(slot) = inodes.get_mut(&inode) {
                *slot = format!(
                    "{table} {} -> {} {}",
                    hex_address(local),
                    hex_address(remote),
                    tcp_state(table, state)
                );
            }
        }
    }
    if let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/net/unix")) {
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if let Some(slot) = fields
                .get(6)
                .and_then(|i| i.parse::<u64>().ok())
                .and_then(|inode| inodes.get_mut(&inode))
            {
                *slot = format!("unix {}", fields.get(7).unwrap_or(&"(unnamed)"));
            }
        }
    }
    inodes
}

/// `0100007F:0050` (IPv4, little-endian) as `127.0.0.1:80`; IPv6 as it is.
fn hex_address(hex: &str) -> String {
    let Some((ip, port)) = hex.split_once(':') else {
        return hex.to_owned();
    };
    let port = u16::from_str_radix(port, 16).unwrap_or(0);
    match u32::from_str_radix(ip, 16) {
        Ok(ip) if ip_len_is_v4(hex) => {
            format!("{}:{port}", std::net::Ipv4Addr::from(ip.swap_bytes()))
        }
        _ => format!("[{ip}]:{port}"),
    }
}

fn ip_len_is_v4(hex: &str) -> bool {
    hex.split_once(':').is_some_and(|(ip, _)| ip.len() == 8)
}

/// The kernel's TCP state number by name (UDP sockets have states too, but
/// only "07", unconnected, and "01", connected, mean anything).
fn tcp_state(table: &str, state: &str) -> &'static str {
    match (table.starts_with("udp"), state) {
        (true, "01") => "connected",
        (true, _) => "",
        (_, "01") => "ESTABLISHED",
        (_, "02") => "SYN_SENT",
        (_, "03") => "SYN_RECV",
        (_, "04") => "FIN_WAIT1",
        (_, "05") => "FIN_WAIT2",
        (_, "06") => "TIME_WAIT",
        (_, "07") => "CLOSE",
        (_, "08") => "CLOSE_WAIT",
        (_, "09") => "LAST_ACK",
        (_, "0A") => "LISTEN",
        (_, "0B") => "CLOSING",
        _ => "?",
    }
}

pub fn meminfo_kib(key: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    text.lines()
        .find_map(|line| line.strip_prefix(key).and_then(|r| r.strip_prefix(':')))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

pub fn open_files_limit() -> Option<u64> {
    limits_open_files("/proc/self/limits")
}

/// Another process's soft limit on open descriptors (RLIMIT_NOFILE).
pub fn open_files_limit_of(pid: u32) -> Option<u64> {
    limits_open_files(&format!("/proc/{pid}/limits"))
}

fn limits_open_files(path: &str) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// UDP receive-buffer drops so far (the `RcvbufErrors` of /proc/net/snmp).
pub fn udp_rcvbuf_errors() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/net/snmp").ok()?;
    let mut lines = text.lines().filter(|l| l.starts_with("Udp:"));
    let names: Vec<&str> = lines.next()?.split_whitespace().collect();
    let values: Vec<&str> = lines.next()?.split_whitespace().collect();
    let i = names.iter().position(|n| *n == "RcvbufErrors")?;
    values.get(i)?.parse().ok()
}

pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

/// The median of `values` (the mean of the middle two for an even count).
pub fn median(values: impl IntoIterator<Item = f64>) -> f64 {
    let mut sorted: Vec<f64> = values.into_iter().collect();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

/// The `p` percentile (0 to 1) of sorted durations, in milliseconds.
pub fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)].as_secs_f64() * 1e3
}
