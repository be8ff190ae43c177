//! What the soak reads from /proc: the figures of a quiet point ([`Reading`],
//! taken by [`super::rest`]), and each measured process's memory sampled all
//! through the run by a thread of its own, traffic flowing, with the
//! statistics shown beside the verdict (medians at both ends of a window and
//! the trend over its second half; shown, not judged).
//!
//! Memory is read from `/proc/PID/smaps_rollup`: `Rss`, and `Anonymous`, the
//! pages of the heap, the stacks and other private mappings, which is what a
//! leak or the allocator's holdings grow. RSS also counts the binary's pages
//! (about half of the gateway's), which the kernel may drop and read again on a
//! busy machine. The allocator's own in-use count (glibc's `mallinfo2`) can
//! only be read from inside the process; the rollup is exact (a page walk, not
//! the approximate counters of `/proc/PID/status`) and needs nothing from the
//! binaries.

use crate::measure::median;
use anyhow::{Context, Result};
use std::collections::BTreeMap;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Samples per process a run takes: every 2 s in the default 600 s run,
/// less often in a longer one, so the samples are bounded.
const SAMPLES_PER_PROCESS: u32 = 300;
/// Least time between two memory samples of one process: a short run still
/// has ten samples in a window of a second.
const MIN_SAMPLE_EVERY: Duration = Duration::from_millis(100);
/// The share of a window whose samples' median is its start (and its end).
const END_SHARE: f64 = 0.2;

/// One process's figures at one quiet point, read once it was at rest
/// ([`super::rest`]).
#[derive(Debug, Clone)]
pub struct Reading {
    pub name: String,
    pub at: Instant,
    pub pid: u32,
    pub fds: u64,
    /// The descriptors by kind, shown when their number changed.
    pub fd_kinds: BTreeMap<String, u64>,
    /// Its sockets by inode, described.
    pub sockets: BTreeMap<u64, String>,
    pub threads: u64,
    /// The threads by name (`/proc/PID/task/*/comm`), shown when their number changed.
    pub thread_kinds: BTreeMap<String, u64>,
    /// Of `threads`, tokio's blocking pool's (its runtime workers left out).
    pub pool: u64,
    pub rss_kib: u64,
    pub anon_kib: u64,
    /// How long after the quiet point began its memory was at rest; `None`
    /// when it was not within the bound (the last reading is the one taken).
    pub memory_rest: Option<Duration>,
    /// The same for its blocking pool's idle threads having retired.
    pub threads_rest: Option<Duration>,
    /// Pool threads that neither ran nor retired within the bound: held by a
    /// blocking call that does not return (0 when the threads were at rest).
    pub stuck: u64,
}

/// `Rss` and `Anonymous` of a process, in KiB.
pub(super) fn memory_kib(pid: u32) -> Result<(u64, u64)> {
    let path = format!("/proc/{pid}/smaps_rollup");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let field = |key: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(key)?.strip_prefix(':'))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .with_context(|| format!("no {key} in {path}"))
    };
    Ok((field("Rss")?, field("Anonymous")?))
}

/// One memory sample of one process.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub pid: u32,
    /// Since the run's start.
    pub at: Duration,
    pub rss_kib: u64,
    pub anon_kib: u64,
}

/// Samples by process name.
pub type Samples = BTreeMap<String, Vec<Sample>>;

/// Samples the memory of the watched processes on a thread of its own (the
/// reads are file system calls, kept off the runtime's threads).
pub struct Sampler {
    watched: Arc<Mutex<Vec<(String, u32)>>>,
    samples: Arc<Mutex<Samples>>,
    stop: mpsc::Sender<()>,
    thread: std::thread::JoinHandle<()>,
    /// How often each process is sampled.
    pub every: Duration,
}

impl Sampler {
    /// Starts sampling `watched` from `t0` for a run of `duration`.
    pub fn start(t0: Instant, duration: Duration, watched: Vec<(String, u32)>) -> Sampler {
        let every = (duration / SAMPLES_PER_PROCESS).max(MIN_SAMPLE_EVERY);
        // The bound: every process's share of the run, with room for the
        // quiet points and restarts that make a run longer than asked.
        let bound = 2 * SAMPLES_PER_PROCESS as usize;
        let watched = Arc::new(Mutex::new(watched));
        let samples = Arc::new(Mutex::new(Samples::new()));
        let (stop, stopped) = mpsc::channel();
        let thread = {
            let (watched, samples) = (watched.clone(), samples.clone());
            std::thread::spawn(move || loop {
                let now = watched.lock().expect("watched lock").clone();
                for (name, pid) in now {
                    // A process read as it stops (a restart) is left out.
                    let Ok((rss_kib, anon_kib)) = memory_kib(pid) else {
                        continue;
                    };
                    let mut samples = samples.lock().expect("samples lock");
                    let of = samples.entry(name).or_default();
                    if of.len() < bound {
                        of.push(Sample {
                            pid,
                            at: t0.elapsed(),
                            rss_kib,
                            anon_kib,
                        });
                    }
                }
                match stopped.recv_timeout(every) {
                    Err(RecvTimeoutError::Timeout) => {}
                    _ => return,
                }
            })
        };
        Sampler {
            watched,
            samples,
            stop,
            thread,
            every,
        }
    }

    /// The processes to sample from now on (after a restart: a new pid).
    pub fn watch(&self, measured: Vec<(String, u32)>) {
        *self.watched.lock().expect("watched lock") = measured;
    }

    /// Stops the thread; every sample taken.
    pub async fn finish(self) -> Samples {
        let _ = self.stop.send(());
        let thread = self.thread;
        // The thread ends at once (it waits on the channel); joined off the runtime.
        let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        std::mem::take(&mut *self.samples.lock().expect("samples lock"))
    }
}

/// One memory figure over one process's window.
#[derive(Debug, Clone, Copy)]
pub struct Trend {
    /// Samples in the window.
    pub samples: usize,
    /// Median of the samples in the window's first fifth, KiB.
    pub start: f64,
    /// Median of the samples in its last fifth, KiB.
    pub end: f64,
    /// `end` against `start`, percent.
    pub growth: f64,
    /// Least-squares slope over the window's second half, KiB per minute.
    pub slope: f64,
    /// What that slope adds over the whole window, percent of `start`.
    pub slope_growth: f64,
}

/// The trend of `figure` over the samples of process `pid` between `from`
/// and `to`; `None` with fewer than ten samples.
pub fn trend(
    samples: &[Sample],
    pid: u32,
    from: Duration,
    to: Duration,
    figure: fn(&Sample) -> u64,
) -> Option<Trend> {
    let points: Vec<(f64, f64)> = samples
        .iter()
        .filter(|s| s.pid == pid && s.at >= from && s.at <= to)
        .map(|s| (s.at.as_secs_f64(), figure(s) as f64))
        .collect();
    if points.len() < 10 {
        return None;
    }
    let (from, to) = (from.as_secs_f64(), to.as_secs_f64());
    let span = (to - from) * END_SHARE;
    let start = median(points.iter().filter(|p| p.0 <= from + span).map(|p| p.1));
    let end = median(points.iter().filter(|p| p.0 >= to - span).map(|p| p.1));
    let mid = (from + to) / 2.0;
    let second_half: Vec<(f64, f64)> = points.iter().copied().filter(|p| p.0 >= mid).collect();
    let slope = least_squares_slope(&second_half) * 60.0;
    Some(Trend {
        samples: points.len(),
        start,
        end,
        growth: (end - start) / start.max(1.0) * 100.0,
        slope,
        slope_growth: slope * (to - from) / 60.0 / start.max(1.0) * 100.0,
    })
}

/// The slope of the least-squares line through `points` (y per x); 0 for
/// fewer than two distinct x.
fn least_squares_slope(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    if points.len() < 2 {
        return 0.0;
    }
    let mean_x = points.iter().map(|p| p.0).sum::<f64>() / n;
    let mean_y = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 - mean_x).powi(2)).sum();
    let sxy: f64 = points.iter().map(|p| (p.0 - mean_x) * (p.1 - mean_y)).sum();
    if sxx == 0.0 {
        0.0
    } else {
        sxy / sxx
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(slope_per_s: f64, n: u64) -> Vec<Sample> {
        (0..n)
            .map(|i| Sample {
                pid: 7,
                at: Duration::from_secs(i * 2),
                rss_kib: (1000.0 + slope_per_s * (i * 2) as f64) as u64,
                anon_kib: 500,
            })
            .collect()
    }

    #[test]
    fn a_steady_rise_has_its_slope_and_growth() {
        // 1 KiB/s for 200 s from 1,000 KiB: the first fifth's median is at
        // 20 s (1,020), the last fifth's at 180 s (1,180).
        let samples = line(1.0, 101);
        let t = trend(&samples, 7, Duration::ZERO, Duration::from_secs(200), |s| {
            s.rss_kib
        })
        .expect("enough samples");
        assert_eq!(t.samples, 101);
        assert!((t.slope - 60.0).abs() < 1e-6, "{t:?}");
        assert!((t.start - 1020.0).abs() < 1e-6, "{t:?}");
        assert!((t.end - 1180.0).abs() < 1e-6, "{t:?}");
        assert!((t.growth - 160.0 / 1020.0 * 100.0).abs() < 1e-6, "{t:?}");
        assert!(
            (t.slope_growth - 200.0 / 1020.0 * 100.0).abs() < 1e-6,
            "{t:?}"
        );
    }

    #[test]
    fn a_flat_figure_and_other_pids_are_left_out() {
        let mut samples = line(0.0, 50);
        samples.push(Sample {
            pid: 8,
            at: Duration::from_secs(99),
            rss_kib: 1_000_000,
            anon_kib: 0,
        });
        let t = trend(&samples, 7, Duration::ZERO, Duration::from_secs(98), |s| {
            s.anon_kib
        })
        .expect("enough samples");
        assert_eq!(
            (t.samples, t.start, t.end, t.slope),
            (50, 500.0, 500.0, 0.0)
        );
        assert!(
            trend(&samples, 8, Duration::ZERO, Duration::from_secs(100), |s| s
                .rss_kib)
            .is_none()
        );
    }
}
