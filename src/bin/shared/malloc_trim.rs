//! Memory handed back after bursts: a thread of its own calls glibc's
//! `malloc_trim(0)` every few seconds, so a process's RSS follows the heap it
//! uses rather than the highest it reached. Included by the `gateway` and
//! `agent` binaries (`#[path]`), the only place outside the SDK's FFI crate
//! with an `unsafe` block; the libraries forbid it.
//!
//! Why: glibc keeps the pages freed after a burst inside its heaps (only the
//! top of a heap is returned by `free`), so the gateway's RSS stepped 3–4 MiB
//! up and down with traffic while its heap in use stayed flat, and no arena or
//! threshold setting changed that; `malloc_trim` releases the free pages in
//! the middle of every arena too (docs/performance.md, "Leak or allocator").
//! `EXITPOOL_MALLOC_TRIM_SECS` sets the period (`0` turns it off). Elsewhere
//! than glibc there is nothing to call and no thread is started.

use anyhow::{bail, Result};
use std::time::Duration;

/// The environment variable that sets the period, in seconds.
pub const ENV: &str = "EXITPOOL_MALLOC_TRIM_SECS";
/// The default period. In the soak (docs/performance.md, "Leak or
/// allocator") 2 s and 5 s kept the gateway's RSS alike, about 5 MiB under
/// glibc's own; a call took 0.5-0.75 ms of CPU on average there (0.03 % of a
/// core at 2 s), and the pages given back are faulted in again by the next
/// burst at either period. The shorter one has them back sooner.
const DEFAULT_EVERY: Duration = Duration::from_secs(2);
/// The longest period the variable may ask for.
const MAX_SECS: f64 = 3600.0;

/// The period `EXITPOOL_MALLOC_TRIM_SECS` asks for (the default without it);
/// `None` when it is `0`.
fn period() -> Result<Option<Duration>> {
    let text = match std::env::var(ENV) {
        Ok(text) => text,
        Err(std::env::VarError::NotPresent) => return Ok(Some(DEFAULT_EVERY)),
        Err(std::env::VarError::NotUnicode(_)) => bail!("{ENV} is not UTF-8"),
    };
    match text.trim().parse::<f64>() {
        Ok(0.0) => Ok(None),
        Ok(secs) if (0.01..=MAX_SECS).contains(&secs) => Ok(Some(Duration::from_secs_f64(secs))),
        _ => bail!(
            "{ENV}={text:?}: give seconds from 0.01 to {MAX_SECS} between two calls of malloc_trim, or 0 for none"
        ),
    }
}

/// Starts the trimming thread at the period the environment asks for; an
/// error when the variable is not a period or the thread cannot start.
pub fn start() -> Result<()> {
    let Some(every) = period()? else {
        tracing::debug!("{ENV}=0: freed memory is not trimmed");
        return Ok(());
    };
    spawn(every)
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn spawn(every: Duration) -> Result<()> {
    use anyhow::Context;
    std::thread::Builder::new()
        .name("malloc-trim".into())
        // It only calls into glibc and logs a line; the default 2 MiB is
        // address space this thread never needs.
        .stack_size(256 * 1024)
        .spawn(move || loop {
            // A period, not a wait for readiness: there is nothing to wait on.
            std::thread::sleep(every);
            let started = std::time::Instant::now();
            // SAFETY: malloc_trim takes a size and no pointer, touches only
            // the allocator's own state under its arena locks, and may be
            // called from any thread at any time (glibc's manual: MT-Safe).
            let released = unsafe { libc::malloc_trim(0) } == 1;
            tracing::debug!(
                took_us = started.elapsed().as_micros() as u64,
                released,
                "malloc_trim"
            );
        })
        .context("starting the malloc-trim thread")?;
    Ok(())
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn spawn(_every: Duration) -> Result<()> {
    Ok(())
}
