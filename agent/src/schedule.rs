//! The owner's schedule: windows by day of week and local time, each sharing
//! at full speed, under its own rate cap, or paused, and a monthly byte cap
//! that resets on a chosen day. The model ([`Schedule::in_force`],
//! [`MonthlyCap`], [`CapLedger`]) is pure and takes the time as an argument;
//! `scheduler` is the agent's task that applies it.
//!
//! Local time comes from `jiff`, which reads the system's time-zone database
//! (DST-correct, no bundled copy on Linux); a schedule may name its zone
//! (`Europe/Berlin`) instead of using the device's.

/// The time types of this module's API are `jiff`'s; the same version for
/// users of the agent crate.
pub use jiff;

use jiff::civil::{Date, DateTime, Time, Weekday};
use jiff::tz::TimeZone;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};
use tokio::sync::watch;

/// How often the schedule task looks at the clock and the bytes relayed: a
/// window starts within this of its time, and the monthly cap overshoots by
/// at most this long of traffic (at most the rate cap's worth, where one holds).
pub const SCHEDULE_TICK: Duration = Duration::from_secs(1);

/// The monthly cap's ledger in the state directory.
const CAP_FILE: &str = "monthly-cap.json";

/// Most windows a schedule may have; each is checked at every tick.
pub const MAX_WINDOWS: usize = 64;

/// What a window does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Share, under this cap in bytes per second per direction if any (the
    /// agent's own `max_rate`, if lower, still holds).
    Share {
        /// The window's cap; `None` is full speed.
        max_rate: Option<NonZeroU32>,
    },
    /// Take no new streams, as [`crate::AgentHandle::pause`] does.
    Pause,
}

/// The days of the week a window starts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Days([bool; 7]);

impl Days {
    /// Every day.
    pub const ALL: Days = Days([true; 7]);

    /// Whether `day` is one of them.
    pub fn contains(self, day: Weekday) -> bool {
        self.0[day.to_monday_zero_offset() as usize]
    }
}

impl std::str::FromStr for Days {
    type Err = String;

    /// `mon`, `monday`, a range `mon-fri` (which may wrap, `fri-mon`),
    /// `weekdays`, `weekends` or `daily`; several joined by commas.
    fn from_str(text: &str) -> Result<Days, String> {
        let mut days = [false; 7];
        for part in text.split(',').map(str::trim) {
            let range = match part.to_ascii_lowercase().as_str() {
                "daily" | "every day" | "all" => (0, 6),
                "weekdays" => (0, 4),
                "weekends" | "weekend" => (5, 6),
                other => match other.split_once('-') {
                    Some((from, to)) => (day_index(from)?, day_index(to)?),
                    None => {
                        let day = day_index(other)?;
                        (day, day)
                    }
                },
            };
            let mut day = range.0;
            loop {
                days[day] = true;
                if day == range.1 {
                    break;
                }
                day = (day + 1) % 7;
            }
        }
        Ok(Days(days))
    }
}

fn day_index(name: &str) -> Result<usize, String> {
    const NAMES: [&str; 7] = [
        "monday",
        "tuesday",
        "wednesday",
        "thursday",
        "friday",
        "saturday",
        "sunday",
    ];
    let name = name.trim().to_ascii_lowercase();
    NAMES
        .iter()
        .position(|full| name.len() >= 3 && full.starts_with(name.as_str()))
        .ok_or_else(|| {
            format!("{name:?} is not a day; use mon..sun, a range such as mon-fri, weekdays, weekends or daily")
        })
}

/// Parses a window's `HH:MM` (`24:00` is the end of the day).
pub fn parse_time(text: &str) -> Result<Time, String> {
    if text.trim() == "24:00" {
        return Ok(Time::midnight());
    }
    Time::strptime("%H:%M", text.trim())
        .map_err(|_| format!("{text:?} is not a time of day; write HH:MM, e.g. 08:30"))
}

/// A span of local time on some days of the week, and what it does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    /// Its name in stats and logs (e.g. `evening`).
    pub name: String,
    /// The days it starts on.
    pub days: Days,
    /// Local time it starts.
    pub start: Time,
    /// Local time it ends; at or before `start` it ends the next day
    /// (`22:00`-`07:00` is a night), equal to `start` it lasts 24 hours.
    pub end: Time,
    /// What it does.
    pub action: Action,
}

impl Window {
    /// Whether the window holds at local time `at`.
    pub fn contains(&self, at: DateTime) -> bool {
        let time = at.time();
        let today = at.weekday();
        if self.start < self.end {
            return self.days.contains(today) && self.start <= time && time < self.end;
        }
        // Crosses midnight: the part after the start today, or the part
        // before the end of a window that started yesterday.
        (self.days.contains(today) && time >= self.start)
            || (self.days.contains(today.previous()) && time < self.end)
    }
}

/// A byte cap (up + down) per month that resets on `reset_day` at local midnight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MonthlyCap {
    /// Bytes per cycle.
    pub bytes: u64,
    /// Day of the month a new cycle starts, 1 to 31; in a shorter month the
    /// cycle starts on its last day.
    pub reset_day: i8,
}

impl MonthlyCap {
    /// The day the cycle containing `today` started.
    pub fn cycle_start(&self, today: Date) -> Date {
        let this_month = self.reset_in(today.first_of_month());
        if today >= this_month {
            return this_month;
        }
        let previous = today
            .first_of_month()
            .yesterday()
            .unwrap_or(today)
            .first_of_month();
        self.reset_in(previous)
    }

    /// The day the cycle containing `today` ends (the next cycle's first day).
    pub fn next_reset(&self, today: Date) -> Date {
        let start = self.cycle_start(today);
        let next_month = start.last_of_month().tomorrow().unwrap_or(start);
        self.reset_in(next_month)
    }

    /// The reset day in the month starting `first`, clamped to its length.
    fn reset_in(&self, first: Date) -> Date {
        let day = self.reset_day.clamp(1, first.days_in_month());
        first.with().day(day).build().unwrap_or(first)
    }
}

/// Bytes relayed in the current cap cycle, kept in the state directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapLedger {
    /// First day of the cycle counted.
    pub cycle: Date,
    /// Bytes relayed (up + down) in it.
    pub used: u64,
}

impl CapLedger {
    /// Adds `bytes` relayed by `today`, starting a new cycle (from zero) if
    /// `today` is past the one counted.
    pub fn account(&mut self, cap: &MonthlyCap, today: Date, bytes: u64) {
        let cycle = cap.cycle_start(today);
        if cycle != self.cycle {
            *self = CapLedger { cycle, used: 0 };
        }
        self.used = self.used.saturating_add(bytes);
    }

    /// What is left of `cap` in the cycle.
    pub fn left(&self, cap: &MonthlyCap) -> u64 {
        cap.bytes.saturating_sub(self.used)
    }
}

/// The owner's schedule.
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    /// Windows, first match wins. With none, the agent shares all the time;
    /// with some, it is paused outside them.
    pub windows: Vec<Window>,
    /// The zone the windows' times are in.
    pub time_zone: TimeZone,
    /// The monthly byte cap, if any.
    pub monthly_cap: Option<MonthlyCap>,
}

/// What a schedule says at some moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InForce<'a> {
    /// The window in force, `None` outside every window.
    pub window: Option<&'a Window>,
    /// What applies now.
    pub action: Action,
}

impl Schedule {
    /// The window and action in force at local time `at`.
    pub fn in_force(&self, at: DateTime) -> InForce<'_> {
        match self.windows.iter().find(|window| window.contains(at)) {
            Some(window) => InForce {
                window: Some(window),
                action: window.action,
            },
            None if self.windows.is_empty() => InForce {
                window: None,
                action: Action::Share { max_rate: None },
            },
            None => InForce {
                window: None,
                action: Action::Pause,
            },
        }
    }

    /// The first local time after `at` (within eight days) at which what is
    /// in force changes, if any: every window's start and end is a candidate.
    pub fn next_change(&self, at: DateTime) -> Option<DateTime> {
        let now = self.in_force(at);
        let mut candidates: Vec<DateTime> = (0..=8)
            .filter_map(|days| at.date().checked_add(jiff::Span::new().days(days)).ok())
            .flat_map(|date| {
                self.windows
                    .iter()
                    .flat_map(move |w| [date.to_datetime(w.start), date.to_datetime(w.end)])
            })
            .filter(|candidate| *candidate > at)
            .collect();
        candidates.sort();
        candidates.dedup();
        candidates.into_iter().find(|candidate| {
            let then = self.in_force(*candidate);
            then.action != now.action || then.window.map(|w| &w.name) != now.window.map(|w| &w.name)
        })
    }

    /// Local time at `now` in the schedule's zone.
    pub fn local(&self, now: SystemTime) -> DateTime {
        let timestamp = Timestamp::try_from(now).unwrap_or(Timestamp::UNIX_EPOCH);
        self.time_zone.to_datetime(timestamp)
    }
}

/// Where the schedule task reads the time: the system clock, or (for tests
/// and apps that know better) a watch whose every change is applied at once.
#[derive(Debug, Clone, Default)]
pub enum Clock {
    /// `SystemTime::now()`.
    #[default]
    System,
    /// The time last sent on the watch.
    Manual(watch::Receiver<SystemTime>),
}

impl Clock {
    /// The time now.
    pub fn now(&self) -> SystemTime {
        match self {
            Clock::System => SystemTime::now(),
            Clock::Manual(time) => *time.borrow(),
        }
    }
}

/// The schedule as stats and the status endpoint show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ScheduleStatus {
    /// The window in force, `None` outside every window.
    pub window: Option<String>,
    /// Whether the schedule pauses sharing now (its window, or the monthly cap).
    pub paused: bool,
    /// The window's rate cap (bytes per second per direction), if any.
    pub window_max_rate: Option<u32>,
    /// Local time of the next change of window, if any within eight days.
    pub until: Option<String>,
    /// The monthly cap, if any.
    pub monthly_cap: Option<CapStatus>,
}

/// The monthly cap's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CapStatus {
    /// Bytes per cycle.
    pub bytes: u64,
    /// Bytes relayed in this cycle.
    pub used: u64,
    /// Bytes left in this cycle.
    pub left: u64,
    /// First day of this cycle.
    pub cycle_start: String,
    /// First day of the next one.
    pub next_reset: String,
}

/// The schedule's state an agent keeps in `Shared`.
#[derive(Debug)]
pub(crate) struct ScheduleState {
    /// What stats show, as it changes; `None` without a schedule.
    pub status: watch::Sender<Option<ScheduleStatus>>,
    /// The monthly cap's count, which the scheduler task keeps.
    pub ledger: Mutex<Option<CapLedger>>,
    file: Option<PathBuf>,
}

impl ScheduleState {
    /// The state for `schedule`, resuming the cap ledger from `state_dir`.
    pub fn load(schedule: Option<&Schedule>, state_dir: Option<&Path>) -> std::io::Result<Self> {
        let capped = schedule.is_some_and(|s| s.monthly_cap.is_some());
        let file = state_dir.filter(|_| capped).map(|dir| dir.join(CAP_FILE));
        let ledger = match &file {
            Some(path) => match std::fs::read(path) {
                Ok(bytes) => Some(serde_json::from_slice(&bytes).map_err(|e| {
                    std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!("{}: {e}", path.display()),
                    )
                })?),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => return Err(e),
            },
            None => None,
        };
        Ok(ScheduleState {
            status: watch::Sender::new(None),
            ledger: Mutex::new(ledger),
            file,
        })
    }

    /// Writes the cap ledger to the state directory (blocking; the status
    /// task calls it with the usage save, off the runtime's threads).
    pub fn save(&self) -> std::io::Result<()> {
        let Some(path) = &self.file else {
            return Ok(());
        };
        let ledger = *self.ledger.lock().expect("ledger lock");
        match ledger {
            Some(ledger) => {
                let bytes = serde_json::to_vec(&ledger).map_err(std::io::Error::other)?;
                crate::state::write_atomically(path, &bytes)
            }
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::civil::date;

    fn window(name: &str, days: &str, start: &str, end: &str, action: Action) -> Window {
        Window {
            name: name.into(),
            days: days.parse().unwrap(),
            start: parse_time(start).unwrap(),
            end: parse_time(end).unwrap(),
            action,
        }
    }

    fn rate(bytes: u32) -> Action {
        Action::Share {
            max_rate: NonZeroU32::new(bytes),
        }
    }

    /// Full speed at night, 1 MB/s in the evening, paused during work hours
    /// on weekdays; outside these (weekend days), paused.
    fn volunteer() -> Schedule {
        Schedule {
            windows: vec![
                window("work", "mon-fri", "09:00", "17:00", Action::Pause),
                window("evening", "daily", "17:00", "23:00", rate(1_000_000)),
                window("night", "daily", "23:00", "09:00", rate(0)),
            ],
            time_zone: TimeZone::UTC,
            monthly_cap: None,
        }
    }

    fn name(schedule: &Schedule, at: DateTime) -> Option<&str> {
        schedule.in_force(at).window.map(|w| w.name.as_str())
    }

    #[test]
    fn the_window_in_force_follows_day_and_time() {
        let s = volunteer();
        // 2026-12-07 is a Monday.
        let monday = date(2026, 12, 7);
        assert_eq!(name(&s, monday.at(8, 59, 59, 0)), Some("night"));
        assert_eq!(name(&s, monday.at(9, 0, 0, 0)), Some("work"));
        assert_eq!(s.in_force(monday.at(12, 0, 0, 0)).action, Action::Pause);
        assert_eq!(name(&s, monday.at(17, 0, 0, 0)), Some("evening"));
        assert_eq!(s.in_force(monday.at(18, 0, 0, 0)).action, rate(1_000_000));
        assert_eq!(name(&s, monday.at(23, 30, 0, 0)), Some("night"));
        assert_eq!(
            s.in_force(monday.at(23, 30, 0, 0)).action,
            Action::Share { max_rate: None }
        );
        // Saturday 12:00: no window holds, and a schedule with windows pauses.
        let saturday = date(2026, 12, 12);
        let at = s.in_force(saturday.at(12, 0, 0, 0));
        assert_eq!((at.window, at.action), (None, Action::Pause));
        // The night that started on Sunday still holds early on Monday.
        assert_eq!(name(&s, date(2026, 12, 14).at(3, 0, 0, 0)), Some("night"));
    }

    #[test]
    fn a_window_crossing_midnight_belongs_to_the_day_it_starts() {
        let friday_night = Schedule {
            windows: vec![window("fri", "fri", "22:00", "02:00", rate(0))],
            time_zone: TimeZone::UTC,
            monthly_cap: None,
        };
        // Friday 2026-12-11.
        assert_eq!(
            name(&friday_night, date(2026, 12, 11).at(23, 0, 0, 0)),
            Some("fri")
        );
        assert_eq!(
            name(&friday_night, date(2026, 12, 12).at(1, 59, 0, 0)),
            Some("fri")
        );
        assert_eq!(name(&friday_night, date(2026, 12, 12).at(2, 0, 0, 0)), None);
        assert_eq!(name(&friday_night, date(2026, 12, 11).at(1, 0, 0, 0)), None);
        let whole_day = window("all", "sun", "00:00", "24:00", rate(0));
        assert!(whole_day.contains(date(2026, 12, 13).at(0, 0, 0, 0)));
        assert!(whole_day.contains(date(2026, 12, 13).at(23, 59, 0, 0)));
        assert!(!whole_day.contains(date(2026, 12, 14).at(0, 0, 0, 0)));
    }

    #[test]
    fn no_windows_share_all_the_time_and_the_next_change_is_found() {
        let always = Schedule {
            windows: vec![],
            time_zone: TimeZone::UTC,
            monthly_cap: None,
        };
        let at = date(2026, 12, 7).at(12, 0, 0, 0);
        assert_eq!(always.in_force(at).action, Action::Share { max_rate: None });
        assert_eq!(always.next_change(at), None);
        let s = volunteer();
        assert_eq!(s.next_change(at), Some(date(2026, 12, 7).at(17, 0, 0, 0)));
        // Friday evening: the next change is the night, then Saturday 09:00
        // when the night ends and nothing holds.
        let friday = date(2026, 12, 11);
        assert_eq!(
            s.next_change(friday.at(23, 0, 0, 0)),
            Some(date(2026, 12, 12).at(9, 0, 0, 0))
        );
    }

    #[test]
    fn days_parse_names_ranges_and_refuse_nonsense() {
        let days: Days = "sat-mon".parse().unwrap();
        assert!(days.contains(Weekday::Saturday) && days.contains(Weekday::Monday));
        assert!(!days.contains(Weekday::Tuesday));
        let days: Days = "weekdays".parse().unwrap();
        assert!(days.contains(Weekday::Friday) && !days.contains(Weekday::Sunday));
        let days: Days = "Tue, thursday".parse().unwrap();
        assert!(days.contains(Weekday::Tuesday) && days.contains(Weekday::Thursday));
        assert!(!days.contains(Weekday::Wednesday));
        assert!("mo".parse::<Days>().is_err());
        assert!("funday".parse::<Days>().is_err());
        assert!(parse_time("25:00").is_err());
        assert!(parse_time("7pm").is_err());
        assert_eq!(
            parse_time("07:30").unwrap(),
            Time::new(7, 30, 0, 0).unwrap()
        );
    }

    #[test]
    fn the_monthly_cap_resets_on_its_day_clamped_to_short_months() {
        let cap = MonthlyCap {
            bytes: 1000,
            reset_day: 15,
        };
        assert_eq!(cap.cycle_start(date(2026, 12, 14)), date(2026, 11, 15));
        assert_eq!(cap.cycle_start(date(2026, 12, 15)), date(2026, 12, 15));
        assert_eq!(cap.next_reset(date(2026, 12, 15)), date(2027, 1, 15));
        assert_eq!(cap.cycle_start(date(2027, 1, 3)), date(2026, 12, 15));
        let end_of_month = MonthlyCap {
            bytes: 1000,
            reset_day: 31,
        };
        assert_eq!(
            end_of_month.cycle_start(date(2026, 2, 28)),
            date(2026, 2, 28)
        );
        assert_eq!(
            end_of_month.cycle_start(date(2026, 2, 27)),
            date(2026, 1, 31)
        );
        assert_eq!(
            end_of_month.next_reset(date(2026, 2, 28)),
            date(2026, 3, 31)
        );

        let mut ledger = CapLedger {
            cycle: cap.cycle_start(date(2026, 12, 1)),
            used: 0,
        };
        ledger.account(&cap, date(2026, 12, 1), 600);
        assert_eq!(ledger.left(&cap), 400);
        ledger.account(&cap, date(2026, 12, 14), 500);
        assert_eq!((ledger.used, ledger.left(&cap)), (1100, 0));
        // The 15th starts a new cycle, counting from the bytes of that look.
        ledger.account(&cap, date(2026, 12, 15), 10);
        assert_eq!(
            ledger,
            CapLedger {
                cycle: date(2026, 12, 15),
                used: 10
            }
        );
    }

    #[test]
    fn local_time_follows_the_zone_with_its_daylight_saving() {
        let Ok(berlin) = TimeZone::get("Europe/Berlin") else {
            panic!("the system's time-zone database has Europe/Berlin (Debian's tzdata)");
        };
        let schedule = Schedule {
            windows: vec![],
            time_zone: berlin,
            monthly_cap: None,
        };
        // 2026-07-01 12:00 UTC is 14:00 in Berlin (summer), 2026-12-01 12:00
        // UTC is 13:00 (winter).
        let summer = SystemTime::UNIX_EPOCH + Duration::from_secs(1_782_907_200);
        let winter = SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_126_400);
        assert_eq!(schedule.local(summer), date(2026, 7, 1).at(14, 0, 0, 0));
        assert_eq!(schedule.local(winter), date(2026, 12, 1).at(13, 0, 0, 0));
    }
}
