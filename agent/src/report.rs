//! The host report: what this device has shared, per UTC day (bytes relayed,
//! streams served, seconds online), kept for [`REPORT_DAYS`] days in the state
//! directory (`report.json`), so an app can show its user what was shared. It
//! rides on the meter's mechanism: day keys from [`Period::key`], folded from
//! the counters the agent already keeps (never a second count on the byte
//! path), and saved atomically by the same loop that saves usage
//! (`status::summaries`), off the runtime's threads.

use crate::meter::Period;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

/// The report file in the state directory.
pub const REPORT_FILE: &str = "report.json";

/// Days kept: older ones are dropped, so the file stays a few kilobytes.
pub const REPORT_DAYS: usize = 90;

/// Largest report file read back (90 days are about 8 KiB): anything bigger
/// was not written by an agent.
const MAX_REPORT_FILE: u64 = 64 * 1024;

/// Longest time counted online between two folds: a host process suspended
/// for a while is not credited with the whole gap.
const MAX_FOLD_GAP: Duration = Duration::from_secs(60);

/// Longest an unsaved change of online time alone waits: the report is
/// folded every few seconds, but a device that only sits online should not
/// write and fsync a file that often.
const ONLINE_SAVE_EVERY: Duration = Duration::from_secs(60);

/// One UTC day of sharing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportDay {
    /// The day, `2026-11-23`.
    pub day: String,
    /// Bytes relayed (to and from targets) that day.
    pub bytes: u64,
    /// Relay streams served that day.
    pub streams: u64,
    /// Seconds the tunnel was up that day.
    pub online_secs: u64,
}

/// The report as kept in memory by a running agent.
#[derive(Debug)]
pub struct Report {
    inner: Mutex<Folded>,
    state_file: Option<PathBuf>,
    /// When the report was last written, and what.
    saved: Mutex<Option<(Instant, Vec<ReportDay>)>>,
}

#[derive(Debug)]
struct Folded {
    /// Oldest first, at most [`REPORT_DAYS`].
    days: VecDeque<ReportDay>,
    /// The agent's totals since start at the last fold.
    seen_bytes: u64,
    seen_streams: u64,
    last_fold: Instant,
}

impl Report {
    /// The report kept in `state_dir` (empty without one, or on first start).
    pub fn new(state_dir: Option<&Path>) -> std::io::Result<Report> {
        let state_file = state_dir.map(|dir| dir.join(REPORT_FILE));
        let days = match &state_file {
            Some(path) => read(path)?,
            None => Vec::new(),
        };
        Ok(Report {
            inner: Mutex::new(Folded {
                days: days.into(),
                seen_bytes: 0,
                seen_streams: 0,
                last_fold: Instant::now(),
            }),
            state_file,
            saved: Mutex::new(None),
        })
    }

    /// Adds what happened since the last fold to the day of `now`: the
    /// agent's totals since start (bytes relayed, streams served) and whether
    /// the tunnel is up now (then the time since the last fold counts as
    /// online). Cheap: called by every stats snapshot and every save.
    pub fn fold(&self, now: SystemTime, bytes_total: u64, streams_total: u64, online: bool) {
        let mut folded = self.inner.lock().expect("report lock");
        let elapsed = folded.last_fold.elapsed().min(MAX_FOLD_GAP);
        folded.last_fold = Instant::now();
        let bytes = bytes_total.saturating_sub(folded.seen_bytes);
        let streams = streams_total.saturating_sub(folded.seen_streams);
        folded.seen_bytes = bytes_total;
        folded.seen_streams = streams_total;
        let key = Period::Day.key(now);
        // A clock set back adds to the latest day rather than reordering days.
        if folded.days.back().is_none_or(|last| last.day < key) {
            folded.days.push_back(ReportDay {
                day: key,
                bytes: 0,
                streams: 0,
                online_secs: 0,
            });
        }
        let today = folded.days.back_mut().expect("pushed above");
        today.bytes += bytes;
        today.streams += streams;
        if online {
            today.online_secs += elapsed.as_secs_f64().round() as u64;
        }
        let oldest_kept =
            Period::Day.key(now - Duration::from_secs(86_400 * (REPORT_DAYS as u64 - 1)));
        while folded.days.len() > REPORT_DAYS
            || folded.days.front().is_some_and(|day| day.day < oldest_kept)
        {
            folded.days.pop_front();
        }
    }

    /// The days kept, oldest first, as of the last fold.
    pub fn days(&self) -> Vec<ReportDay> {
        self.inner
            .lock()
            .expect("report lock")
            .days
            .iter()
            .cloned()
            .collect()
    }

    /// Writes the report to the state directory (atomically) if it changed:
    /// at once for new bytes, streams or days, within `ONLINE_SAVE_EVERY`
    /// for online time alone. A file write and an fsync, so call it off the
    /// runtime's threads.
    pub fn save(&self) -> std::io::Result<()> {
        let Some(path) = &self.state_file else {
            return Ok(());
        };
        let days = self.days();
        let mut saved = self.saved.lock().expect("report save lock");
        if let Some((at, last)) = &*saved {
            let same_counts = last.len() == days.len()
                && last
                    .iter()
                    .zip(&days)
                    .all(|(a, b)| (&a.day, a.bytes, a.streams) == (&b.day, b.bytes, b.streams));
            if same_counts && (*last == days || at.elapsed() < ONLINE_SAVE_EVERY) {
                return Ok(());
            }
        }
        let bytes = serde_json::to_vec(&days).map_err(std::io::Error::other)?;
        crate::state::write_atomically(path, &bytes)?;
        *saved = Some((Instant::now(), days));
        Ok(())
    }
}

/// The report kept in `dir`, oldest day first (empty if there is none), for an
/// app to show while no agent runs.
pub fn load(dir: &Path) -> std::io::Result<Vec<ReportDay>> {
    read(&dir.join(REPORT_FILE))
}

fn read(path: &Path) -> std::io::Result<Vec<ReportDay>> {
    let invalid = |message: String| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{}: {message}", path.display()),
        )
    };
    let file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let size = file.metadata()?.len();
    if size > MAX_REPORT_FILE {
        return Err(invalid(format!(
            "{size} bytes, more than a report ({MAX_REPORT_FILE}) can be"
        )));
    }
    let mut days: Vec<ReportDay> = serde_json::from_reader(std::io::BufReader::new(file))
        .map_err(|e| invalid(e.to_string()))?;
    days.sort_by(|a, b| a.day.cmp(&b.day));
    let excess = days.len().saturating_sub(REPORT_DAYS);
    days.drain(..excess);
    Ok(days)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    fn temp_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("exitpool-report-{}", rand::random::<u64>()));
        crate::state::prepare_dir(&dir).unwrap();
        dir
    }

    fn day(n: u64) -> SystemTime {
        // 2026-01-01 00:00 UTC plus n days, at noon.
        UNIX_EPOCH + Duration::from_secs(1_767_225_600 + n * 86_400 + 43_200)
    }

    #[test]
    fn days_are_folded_from_totals_and_saved() {
        let dir = temp_dir();
        let report = Report::new(Some(&dir)).unwrap();
        report.fold(day(0), 1000, 2, true);
        report.fold(day(0), 1500, 3, false);
        report.fold(day(1), 1600, 4, true);
        let days = report.days();
        assert_eq!(days.len(), 2, "{days:?}");
        assert_eq!(
            (days[0].day.as_str(), days[0].bytes, days[0].streams),
            ("2026-01-01", 1500, 3)
        );
        assert_eq!((days[1].bytes, days[1].streams), (100, 1));
        report.save().unwrap();
        assert_eq!(load(&dir).unwrap(), days);
        // A restarted agent counts its totals from zero again.
        let again = Report::new(Some(&dir)).unwrap();
        again.fold(day(1), 50, 1, false);
        assert_eq!(again.days()[1].bytes, 150);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn online_time_alone_is_saved_at_most_once_a_minute() {
        let dir = temp_dir();
        let report = Report::new(Some(&dir)).unwrap();
        report.fold(day(0), 10, 1, true);
        report.save().unwrap();
        let path = dir.join(REPORT_FILE);
        std::fs::remove_file(&path).unwrap();
        report.fold(day(0), 10, 1, true);
        report.save().unwrap();
        assert!(!path.exists(), "online time alone waits");
        report.fold(day(0), 11, 1, true);
        report.save().unwrap();
        assert_eq!(
            load(&dir).unwrap()[0].bytes,
            11,
            "new bytes are saved at once"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn only_ninety_days_are_kept() {
        let report = Report::new(None).unwrap();
        for n in 0..200 {
            report.fold(day(n), n, n, false);
        }
        let days = report.days();
        assert_eq!(days.len(), REPORT_DAYS);
        assert_eq!(days.last().unwrap().day, Period::Day.key(day(199)));
        assert_eq!(days[0].day, Period::Day.key(day(110)));
    }

    #[test]
    fn a_file_that_is_no_report_is_refused_by_name() {
        let dir = temp_dir();
        std::fs::write(dir.join(REPORT_FILE), "{\"days\": 3}").unwrap();
        let error = load(&dir).unwrap_err();
        assert!(error.to_string().contains(REPORT_FILE), "{error}");
        std::fs::write(dir.join(REPORT_FILE), vec![b' '; 100_000]).unwrap();
        assert!(Report::new(Some(&dir)).is_err());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
