//! The owner's limits on the byte path: a bandwidth cap per direction (token
//! buckets from `governor`, shared by all streams) and a byte quota per day or
//! month that survives restarts. Every chunk an agent relays passes through
//! [`Meter`], which counts it and waits for the cap.

use exitpool_transport::relay::{Direction, Throttle, RELAY_CHUNK};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use serde::{Deserialize, Serialize};
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::sync::watch;

const USAGE_FILE: &str = "usage.json";

/// The span a quota covers, in UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Period {
    /// A calendar day.
    #[default]
    Day,
    /// A calendar month.
    Month,
}

impl std::str::FromStr for Period {
    type Err = String;

    fn from_str(text: &str) -> Result<Period, String> {
        match text {
            "day" | "daily" => Ok(Period::Day),
            "month" | "monthly" => Ok(Period::Month),
            _ => Err(format!("{text:?}: expected day or month")),
        }
    }
}

impl Period {
    /// The key of the period containing `now`, e.g. `2026-11-23` or `2026-11`.
    pub fn key(self, now: SystemTime) -> String {
        let days = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs() / 86_400;
        let (year, month, day) = civil_from_days(days as i64);
        match self {
            Period::Day => format!("{year:04}-{month:02}-{day:02}"),
            Period::Month => format!("{year:04}-{month:02}"),
        }
    }
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar
/// (the well-known era-based conversion).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// The owner's limits, as configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Limits {
    /// Bytes per second in each direction; `None` is uncapped.
    pub max_rate: Option<NonZeroU32>,
    /// Bytes (up + down) per period; `None` is unlimited.
    pub quota_bytes: Option<u64>,
    /// The quota's period (also the period "bytes today" is counted over).
    pub period: Period,
}

#[derive(Debug, Serialize, Deserialize)]
struct SavedUsage {
    period: String,
    bytes: u64,
}

/// Counts and paces the agent's relayed bytes.
#[derive(Debug)]
pub struct Meter {
    limits: Limits,
    /// The buckets of the cap in force; replaced whole when the schedule
    /// changes the cap ([`Meter::set_max_rate`]), so a chunk waits on the
    /// bucket it took.
    buckets: RwLock<Option<Buckets>>,
    /// The cap in force, bytes per second; 0 is uncapped.
    max_rate: AtomicU32,
    /// Bytes sent to targets since start.
    pub bytes_up: AtomicU64,
    /// Bytes received from targets since start.
    pub bytes_down: AtomicU64,
    period_bytes: AtomicU64,
    period_key: Mutex<String>,
    state_file: Option<PathBuf>,
    exhausted: watch::Sender<bool>,
}

impl Meter {
    /// A meter with `limits`, resuming the period's usage from `state_dir`.
    pub fn new(limits: Limits, state_dir: Option<&Path>) -> std::io::Result<Meter> {
        let state_file = state_dir.map(|dir| dir.join(USAGE_FILE));
        let key = limits.period.key(SystemTime::now());
        let saved = match &state_file {
            Some(path) => load(path)?,
            None => None,
        };
        let period_bytes = saved
            .filter(|saved| saved.period == key)
            .map_or(0, |saved| saved.bytes);
        let meter = Meter {
            limits,
            buckets: RwLock::new(limits.max_rate.map(Buckets::new)),
            max_rate: AtomicU32::new(limits.max_rate.map_or(0, NonZeroU32::get)),
            bytes_up: AtomicU64::new(0),
            bytes_down: AtomicU64::new(0),
            period_bytes: AtomicU64::new(period_bytes),
            period_key: Mutex::new(key),
            state_file,
            exhausted: watch::Sender::new(false),
        };
        meter.update_exhausted();
        Ok(meter)
    }

    /// The configured limits.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// The bandwidth cap in force now (the configured one unless the
    /// schedule changed it).
    pub fn max_rate(&self) -> Option<NonZeroU32> {
        NonZeroU32::new(self.max_rate.load(Ordering::Relaxed))
    }

    /// Replaces the bandwidth cap in force (for all streams, from their next
    /// chunk); a cap equal to the one in force changes nothing.
    pub fn set_max_rate(&self, rate: Option<NonZeroU32>) {
        let mut buckets = self.buckets.write().expect("buckets lock");
        if self.max_rate() != rate {
            *buckets = rate.map(Buckets::new);
            self.max_rate
                .store(rate.map_or(0, NonZeroU32::get), Ordering::Relaxed);
        }
    }

    /// Bytes relayed in the current period.
    pub fn period_bytes(&self) -> u64 {
        self.period_bytes.load(Ordering::Relaxed)
    }

    /// The current period's key.
    pub fn period_key(&self) -> String {
        self.period_key.lock().expect("period lock").clone()
    }

    /// Whether the quota is used up for this period.
    pub fn is_exhausted(&self) -> bool {
        *self.exhausted.borrow()
    }

    /// Changes whenever the quota becomes exhausted or is renewed.
    pub fn subscribe_exhausted(&self) -> watch::Receiver<bool> {
        self.exhausted.subscribe()
    }

    fn update_exhausted(&self) {
        let exhausted = self
            .limits
            .quota_bytes
            .is_some_and(|quota| self.period_bytes() >= quota);
        self.exhausted.send_if_modified(|current| {
            let changed = *current != exhausted;
            *current = exhausted;
            changed
        });
    }

    /// Starts a new period if the calendar moved on; called periodically.
    pub fn roll_period(&self, now: SystemTime) {
        let key = self.limits.period.key(now);
        let mut current = self.period_key.lock().expect("period lock");
        if *current != key {
            *current = key;
            self.period_bytes.store(0, Ordering::Relaxed);
            drop(current);
            self.update_exhausted();
        }
    }

    /// Writes the period's usage to the state directory (atomically).
    pub fn save(&self) -> std::io::Result<()> {
        let Some(path) = &self.state_file else {
            return Ok(());
        };
        let saved = SavedUsage {
            period: self.period_key(),
            bytes: self.period_bytes(),
        };
        let bytes = serde_json::to_vec(&saved).map_err(std::io::Error::other)?;
        crate::state::write_atomically(path, &bytes)
    }
}

/// One token bucket per direction for a cap.
#[derive(Debug)]
struct Buckets {
    to_targets: Arc<DefaultDirectRateLimiter>,
    from_targets: Arc<DefaultDirectRateLimiter>,
}

impl Buckets {
    fn new(rate: NonZeroU32) -> Buckets {
        // A quarter second of burst keeps the cap tight over short transfers;
        // at least one relay chunk, so any single chunk can pass.
        let burst = NonZeroU32::new(rate.get() / 4)
            .unwrap_or(rate)
            .max(NonZeroU32::new(RELAY_CHUNK as u32).expect("non-zero"));
        let bucket = || {
            Arc::new(RateLimiter::direct(
                Quota::per_second(rate).allow_burst(burst),
            ))
        };
        Buckets {
            to_targets: bucket(),
            from_targets: bucket(),
        }
    }
}

fn load(path: &Path) -> std::io::Result<Option<SavedUsage>> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{}: {e}", path.display()),
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

impl Throttle for Meter {
    async fn pass(&self, direction: Direction, bytes: usize) {
        let counter = match direction {
            // The tunnel faces the gateway: what comes from it goes to targets.
            Direction::FromTunnel => &self.bytes_up,
            Direction::ToTunnel => &self.bytes_down,
        };
        counter.fetch_add(bytes as u64, Ordering::Relaxed);
        let before = self.period_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
        if self
            .limits
            .quota_bytes
            .is_some_and(|quota| before < quota && before + bytes as u64 >= quota)
        {
            self.update_exhausted();
        }
        let bucket = self
            .buckets
            .read()
            .expect("buckets lock")
            .as_ref()
            .map(|buckets| match direction {
                Direction::FromTunnel => buckets.to_targets.clone(),
                Direction::ToTunnel => buckets.from_targets.clone(),
            });
        if let (Some(bucket), Some(cells)) = (bucket, NonZeroU32::new(bytes as u32)) {
            // Chunks never exceed the burst (see `new`), so this cannot fail.
            let _ = bucket.until_n_ready(cells).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn period_keys_follow_the_calendar() {
        let at = |secs: u64| UNIX_EPOCH + Duration::from_secs(secs);
        assert_eq!(Period::Day.key(at(0)), "1970-01-01");
        // 2024-02-29 12:00 UTC (a leap day) and 2026-11-23 00:00 UTC.
        assert_eq!(Period::Day.key(at(1_709_208_000)), "2024-02-29");
        assert_eq!(Period::Month.key(at(1_709_208_000)), "2024-02");
        assert_eq!(Period::Day.key(at(1_795_392_000)), "2026-11-23");
    }

    #[tokio::test]
    async fn the_quota_is_used_up_saved_and_renewed() {
        let dir = tempfile_dir();
        let limits = Limits {
            quota_bytes: Some(1000),
            ..Limits::default()
        };
        let meter = Meter::new(limits, Some(&dir)).unwrap();
        meter.pass(Direction::FromTunnel, 600).await;
        assert!(!meter.is_exhausted());
        meter.pass(Direction::ToTunnel, 400).await;
        assert!(meter.is_exhausted());
        meter.save().unwrap();
        let again = Meter::new(limits, Some(&dir)).unwrap();
        assert_eq!(again.period_bytes(), 1000);
        assert!(again.is_exhausted(), "the quota survives a restart");
        again.roll_period(SystemTime::now() + Duration::from_secs(2 * 86_400));
        assert!(!again.is_exhausted(), "a new day renews it");
        std::fs::remove_dir_all(dir).unwrap();
    }

    fn tempfile_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("exitpool-meter-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
