//! A quiet point's readings, taken once each measured process is at rest: its
//! memory no longer falling after its allocator handed freed pages back, and
//! no idle thread of tokio's blocking pool left to retire. Called by
//! [`super::faults::quiet_point`] with traffic paused and no stream open.
//!
//! Memory: the binaries call `malloc_trim` every `EXITPOOL_MALLOC_TRIM_SECS`
//! (2 s by default), so right after traffic stops RSS still holds the last
//! bursts' freed pages. A process is at rest once at least one trim period
//! (and a poll) has passed since the quiet point began and its RSS is within
//! [`MEMORY_TOLERANCE`] of its reading one such span earlier, so a trim lies
//! between the two readings; at most [`MEMORY_BOUND`].
//!
//! Threads: tokio's blocking pool (file writes, name lookups) starts a thread
//! on demand and ends it after 10 s idle; its threads carry the runtime's
//! name, [`POOL_THREAD`], as do a multi-thread runtime's workers. An idle pool
//! thread does not run until it retires, so the threads are at rest once every
//! thread of that name, less the runtime's own workers, has run since the quiet
//! point began and the count held over two polls; at most [`THREADS_BOUND`],
//! past tokio's 10 s keep-alive. A periodic chore keeps threads: the gateway
//! and the agents write usage every 5 s on the pool, and tokio wakes its idle
//! threads in turn, so two threads made by one moment of two calls at once
//! may both live on, each woken every 10 s, right at the keep-alive. A pool
//! thread that neither ran nor retired within the bound is held by a call
//! that does not return ([`Reading::stuck`]). Both waits are polled, with a
//! bound, never slept out.

use super::sampling::{memory_kib, Reading};
use crate::measure::{fd_kinds, proc_entries, sockets};
use anyhow::{Context, Result};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// The name tokio gives its blocking pool's threads (and its workers).
pub const POOL_THREAD: &str = "tokio-rt-worker";
/// How often a process is read while it comes to rest.
const POLL: Duration = Duration::from_millis(500);
/// Most two readings a trim period apart may differ for memory at rest.
const MEMORY_TOLERANCE: f64 = 0.01;
/// Longest the wait for memory at rest; its last reading is taken after it.
const MEMORY_BOUND: Duration = Duration::from_secs(10);
/// Longest the wait for the idle pool threads to retire: tokio's keep-alive
/// (10 s), two polls, and a margin for a loaded machine's late wake-ups.
const THREADS_BOUND: Duration = Duration::from_secs(13);
/// The binaries' trim period variable and its default (`src/bin/shared/malloc_trim.rs`).
const TRIM_ENV: &str = "EXITPOOL_MALLOC_TRIM_SECS";
const TRIM_DEFAULT: Duration = Duration::from_secs(2);

/// A process to read: its name, pid and how many of its threads named
/// [`POOL_THREAD`] are runtime workers (0 on a current-thread runtime).
#[derive(Debug, Clone)]
pub struct Measured {
    pub name: String,
    pub pid: u32,
    pub workers: u64,
}

/// The readings of every process once each is at rest (or its bounds
/// passed: [`Reading::memory_rest`] and [`Reading::threads_rest`] say which).
pub async fn read_at_rest(measured: Vec<Measured>) -> Result<Vec<Reading>> {
    // /proc is read in a loop with pauses: on a blocking thread, off the runtime.
    tokio::task::spawn_blocking(move || wait_for_rest(&measured, POOL_THREAD, THREADS_BOUND))
        .await
        .context("the quiet-point reader ended")?
}

/// One process's state while it comes to rest.
struct Watch {
    /// The span between the two readings compared: a trim period and a poll.
    span: Duration,
    /// (since the quiet point began, RSS KiB).
    rss: Vec<(Duration, u64)>,
    memory_rest: Option<Duration>,
    /// Each pool-named thread's context switches when the quiet point began.
    baseline: BTreeMap<u32, u64>,
    /// Pool threads and settled polls in a row at the last poll.
    last_count: Option<u64>,
    settled_polls: u32,
    threads_rest: Option<Duration>,
    /// Pool threads (beyond the runtime's workers) idle at the last poll.
    idle: u64,
}

/// Polls until every process is at rest or its bounds passed; the pool's
/// threads are those named `pool_name`, waited for at most `threads_bound`.
fn wait_for_rest(
    measured: &[Measured],
    pool_name: &str,
    threads_bound: Duration,
) -> Result<Vec<Reading>> {
    let began = Instant::now();
    let mut watches = Vec::new();
    for process in measured {
        let trim = trim_period(process.pid);
        watches.push(Watch {
            span: (trim.unwrap_or(Duration::ZERO) + POLL).max(Duration::from_secs(1)),
            rss: Vec::new(),
            memory_rest: None,
            baseline: pool_switches(process.pid, pool_name)?,
            last_count: None,
            settled_polls: 0,
            threads_rest: None,
            idle: 0,
        });
    }
    let mut readings: Vec<Option<Reading>> = vec![None; measured.len()];
    loop {
        let now = began.elapsed();
        for ((process, watch), reading) in measured.iter().zip(&mut watches).zip(&mut readings) {
            if reading.is_some() {
                continue;
            }
            if watch.memory_rest.is_none() {
                let (rss, _) = memory_kib(process.pid)?;
                // Bounded: one reading a poll within MEMORY_BOUND.
                watch.rss.push((now, rss));
                if memory_at_rest(&watch.rss, watch.span) {
                    watch.memory_rest = Some(now);
                }
            }
            if watch.threads_rest.is_none() {
                let current = pool_switches(process.pid, pool_name)?;
                let idle = idle_pool_threads(&watch.baseline, &current);
                let count = current.len() as u64;
                watch.idle = idle.saturating_sub(process.workers);
                if idle <= process.workers && watch.last_count == Some(count) {
                    watch.settled_polls += 1;
                } else {
                    watch.settled_polls = u32::from(idle <= process.workers);
                }
                watch.last_count = Some(count);
                // Twice in a row with the same count: a thread woken by its
                // keep-alive's end is gone by the next poll.
                if watch.settled_polls >= 2 {
                    watch.threads_rest = Some(now);
                }
            }
            let memory_done = watch.memory_rest.is_some() || now >= MEMORY_BOUND;
            let threads_done = watch.threads_rest.is_some() || now >= threads_bound;
            if memory_done && threads_done {
                *reading = Some(read_one(process, pool_name, watch)?);
            }
        }
        if readings.iter().all(Option::is_some) {
            return Ok(readings.into_iter().flatten().collect());
        }
        std::thread::sleep(POLL);
    }
}

/// Whether the last reading is at least `span` after the first and within
/// [`MEMORY_TOLERANCE`] of the latest reading at least `span` before it.
fn memory_at_rest(rss: &[(Duration, u64)], span: Duration) -> bool {
    let Some(&(at, last)) = rss.last() else {
        return false;
    };
    let Some(&(_, earlier)) = rss.iter().rev().find(|(t, _)| *t + span <= at) else {
        return false;
    };
    (last as f64 - earlier as f64).abs() <= earlier as f64 * MEMORY_TOLERANCE
}

/// The pool-named threads that have not run since `baseline`: there then,
/// here now, and not one context switch more.
fn idle_pool_threads(baseline: &BTreeMap<u32, u64>, current: &BTreeMap<u32, u64>) -> u64 {
    current
        .iter()
        .filter(|(tid, switches)| baseline.get(tid) == Some(switches))
        .count() as u64
}

/// Context switches (voluntary and not) of each of the process's threads
/// named `pool_name`, by thread id. A thread that ends between the listing
/// and its reading is left out.
fn pool_switches(pid: u32, pool_name: &str) -> Result<BTreeMap<u32, u64>> {
    let mut out = BTreeMap::new();
    for (tid, name) in thread_names(pid)? {
        if name != pool_name {
            continue;
        }
        let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status")) else {
            continue;
        };
        let switches: u64 = status
            .lines()
            .filter_map(|line| {
                let value = line
                    .strip_prefix("voluntary_ctxt_switches:")
                    .or_else(|| line.strip_prefix("nonvoluntary_ctxt_switches:"))?;
                value.trim().parse::<u64>().ok()
            })
            .sum();
        out.insert(tid, switches);
    }
    Ok(out)
}

/// Every thread of the process by id, with its name (`comm`).
fn thread_names(pid: u32) -> Result<Vec<(u32, String)>> {
    let path = format!("/proc/{pid}/task");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&path).with_context(|| format!("reading {path}"))? {
        let Some(tid) = entry?.file_name().to_str().and_then(|t| t.parse().ok()) else {
            continue;
        };
        if let Ok(comm) = std::fs::read_to_string(format!("{path}/{tid}/comm")) {
            out.push((tid, comm.trim_end().to_owned()));
        }
    }
    Ok(out)
}

/// The process's trim period from its environment: the default without the
/// variable, `None` when it turns trimming off (or cannot be read).
fn trim_period(pid: u32) -> Option<Duration> {
    let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else {
        return Some(TRIM_DEFAULT);
    };
    let prefix = format!("{TRIM_ENV}=");
    let value = environ
        .split(|b| *b == 0)
        .find_map(|var| var.strip_prefix(prefix.as_bytes()));
    match value {
        None => Some(TRIM_DEFAULT),
        Some(text) => std::str::from_utf8(text)
            .ok()
            .and_then(|t| t.trim().parse::<f64>().ok())
            .filter(|secs| *secs > 0.0 && secs.is_finite())
            .map(Duration::from_secs_f64),
    }
}

/// The figures of one process, read now.
fn read_one(process: &Measured, pool_name: &str, watch: &Watch) -> Result<Reading> {
    let pid = process.pid;
    let (rss_kib, anon_kib) = memory_kib(pid)?;
    let mut thread_kinds: BTreeMap<String, u64> = BTreeMap::new();
    for (_, name) in thread_names(pid)? {
        *thread_kinds.entry(name).or_default() += 1;
    }
    let named_pool = thread_kinds.get(pool_name).copied().unwrap_or(0);
    Ok(Reading {
        name: process.name.clone(),
        at: Instant::now(),
        pid,
        fds: proc_entries(pid, "fd")?,
        fd_kinds: fd_kinds(pid)?,
        sockets: sockets(pid),
        threads: proc_entries(pid, "task")?,
        thread_kinds,
        pool: named_pool.saturating_sub(process.workers),
        rss_kib,
        anon_kib,
        memory_rest: watch.memory_rest,
        threads_rest: watch.threads_rest,
        stuck: if watch.threads_rest.is_some() {
            0
        } else {
            watch.idle
        },
    })
}

/// Threads of this test process named `name`.
#[cfg(test)]
fn count_named(name: &str) -> u64 {
    thread_names(std::process::id())
        .unwrap()
        .iter()
        .filter(|(_, n)| n == name)
        .count() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    #[test]
    fn memory_is_at_rest_once_it_holds_over_a_trim_period() {
        let span = secs(2.5);
        // Falling with each trim, then flat: at rest at the first reading
        // 2.5 s after a reading it matches within 1 %.
        let rss: Vec<(Duration, u64)> = [
            (0.0, 30_000),
            (0.5, 30_000),
            (1.0, 27_000),
            (1.5, 27_000),
            (2.0, 27_000),
            (2.5, 27_000),
            (3.0, 26_000),
            (3.5, 26_000),
            (4.0, 26_000),
            (4.5, 26_000),
            (5.0, 26_000),
            (5.5, 26_100),
        ]
        .iter()
        .map(|(t, v)| (secs(*t), *v))
        .collect();
        let first = (1..=rss.len())
            .find(|n| memory_at_rest(&rss[..*n], span))
            .map(|n| rss[n - 1].0);
        // 3.0 s against 0.5 s: -13 %; 5.5 s against 3.0 s: +0.4 %.
        assert_eq!(first, Some(secs(5.5)));
        // Never a span long: never at rest.
        assert!(!memory_at_rest(&rss[..5], span));
        assert!(!memory_at_rest(&[], span));
    }

    #[test]
    fn an_idle_pool_thread_is_one_that_has_not_run_since() {
        let baseline = BTreeMap::from([(10, 5), (11, 7), (12, 1)]);
        // 10 ran, 11 did not, 12 retired, 13 is new (it ran).
        let current = BTreeMap::from([(10, 6), (11, 7), (13, 2)]);
        assert_eq!(idle_pool_threads(&baseline, &current), 1);
        assert_eq!(idle_pool_threads(&baseline, &BTreeMap::new()), 0);
    }

    /// A real tokio runtime: an idle blocking-pool thread (keep-alive 1 s)
    /// is waited out and is gone from the reading; a pool thread kept busy by
    /// a chore every 200 ms is at rest at once and counted.
    #[test]
    fn idle_pool_threads_are_waited_out_and_busy_ones_counted() {
        let name = "soak-rest-test";
        let runtime = tokio::runtime::Builder::new_current_thread()
            .thread_name(name)
            .thread_keep_alive(Duration::from_secs(1))
            .enable_all()
            .build()
            .unwrap();
        // Two pool threads at once, then both idle.
        runtime.block_on(async {
            let (a, b) = (
                tokio::task::spawn_blocking(|| std::thread::sleep(Duration::from_millis(100))),
                tokio::task::spawn_blocking(|| std::thread::sleep(Duration::from_millis(100))),
            );
            a.await.unwrap();
            b.await.unwrap();
        });
        assert_eq!(count_named(name), 2);
        let me = Measured {
            name: "test".into(),
            pid: std::process::id(),
            workers: 0,
        };
        let started = Instant::now();
        let reading = wait_for_rest(std::slice::from_ref(&me), name, THREADS_BOUND)
            .unwrap()
            .remove(0);
        assert_eq!((reading.pool, reading.stuck), (0, 0), "{reading:?}");
        let rested = reading.threads_rest.expect("threads at rest");
        assert!(rested >= Duration::from_millis(500), "{rested:?}");
        assert!(started.elapsed() < THREADS_BOUND, "{:?}", started.elapsed());
        // A chore every 200 ms keeps one pool thread in use.
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let chore = {
            let (stop, handle) = (stop.clone(), runtime.handle().clone());
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let _ = handle.block_on(handle.spawn_blocking(|| ()));
                    std::thread::sleep(Duration::from_millis(200));
                }
            })
        };
        let reading = wait_for_rest(std::slice::from_ref(&me), name, THREADS_BOUND)
            .unwrap()
            .remove(0);
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        chore.join().unwrap();
        assert_eq!((reading.pool, reading.stuck), (1, 0), "{reading:?}");
        assert!(
            reading.threads_rest.expect("at rest") < Duration::from_secs(2),
            "{reading:?}"
        );
    }

    /// A pool thread held by a call that does not return neither runs nor
    /// retires: the wait ends at its bound and names it stuck.
    #[test]
    fn a_pool_thread_held_by_a_call_is_stuck() {
        let name = "soak-stuck-test";
        let runtime = tokio::runtime::Builder::new_current_thread()
            .thread_name(name)
            .thread_keep_alive(Duration::from_millis(500))
            .build()
            .unwrap();
        let (release, held) = std::sync::mpsc::channel::<()>();
        let call = runtime.spawn_blocking(move || held.recv_timeout(Duration::from_secs(30)));
        let me = Measured {
            name: "test".into(),
            pid: std::process::id(),
            workers: 0,
        };
        // The thread exists once the call runs on it.
        let deadline = Instant::now() + Duration::from_secs(5);
        while count_named(name) == 0 {
            assert!(Instant::now() < deadline, "the pool thread did not start");
            std::thread::sleep(Duration::from_millis(10));
        }
        let bound = Duration::from_secs(2);
        let reading = wait_for_rest(std::slice::from_ref(&me), name, bound)
            .unwrap()
            .remove(0);
        release.send(()).unwrap();
        runtime.block_on(call).unwrap().unwrap();
        assert_eq!(
            (reading.pool, reading.stuck, reading.threads_rest),
            (1, 1, None),
            "{reading:?}"
        );
    }
}
