//! The last hour of the gateway's traffic for the dashboard's overview (part
//! of the admin port's dashboard, [`super`]): every [`PERIOD`] a sample of the
//! byte and connection counters and the live streams, in a ring of
//! [`SAMPLES`], so the page draws bytes per second without any history store.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

/// How often a sample is taken.
pub const PERIOD: Duration = Duration::from_secs(10);

/// Samples kept: one hour.
pub const SAMPLES: usize = 360;

/// The counters at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Sample {
    /// Unix time, seconds.
    pub at: u64,
    /// Bytes towards targets so far (a counter).
    pub bytes_up: u64,
    /// Bytes towards customers so far (a counter).
    pub bytes_down: u64,
    /// Customer connections so far (a counter).
    pub connections: u64,
    /// Streams open at that moment.
    pub live_streams: u64,
}

/// One point of the page's chart: rates over the interval ending at `at`.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct Rate {
    /// Unix time, seconds, at the end of the interval.
    pub at: u64,
    /// Bytes per second towards targets.
    pub up_per_sec: f64,
    /// Bytes per second towards customers.
    pub down_per_sec: f64,
    /// New connections per second.
    pub connections_per_sec: f64,
    /// Streams open at `at`.
    pub live_streams: u64,
}

/// The ring of samples.
#[derive(Debug, Default)]
pub struct Samples {
    ring: Mutex<VecDeque<Sample>>,
}

impl Samples {
    /// Adds `sample`, dropping the oldest beyond [`SAMPLES`] + 1 (the extra
    /// one is the start of the hour's first interval).
    pub fn push(&self, sample: Sample) {
        let mut ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        if ring.len() > SAMPLES {
            ring.pop_front();
        }
        ring.push_back(sample);
    }

    /// Rates between consecutive samples, oldest first, and from the last
    /// sample to `now` (the counters as they are) when a second or more has
    /// passed since, so the chart moves before the next sample. A counter
    /// that went down (a usage reset) gives a zero rate for that interval,
    /// not a negative one.
    pub fn rates(&self, now: Sample) -> Vec<Rate> {
        let ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        let tail = ring.back().filter(|last| now.at > last.at).map(|_| now);
        let points: Vec<&Sample> = ring.iter().chain(tail.as_ref()).collect();
        points
            .iter()
            .zip(points.iter().skip(1))
            .map(|(before, after)| {
                let seconds = after.at.saturating_sub(before.at).max(1) as f64;
                let rate = |a: u64, b: u64| a.saturating_sub(b) as f64 / seconds;
                Rate {
                    at: after.at,
                    up_per_sec: rate(after.bytes_up, before.bytes_up),
                    down_per_sec: rate(after.bytes_down, before.bytes_down),
                    connections_per_sec: rate(after.connections, before.connections),
                    live_streams: after.live_streams,
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_come_from_consecutive_samples_and_the_ring_is_bounded() {
        let samples = Samples::default();
        assert!(samples.rates(Sample::default()).is_empty());
        for i in 0..(SAMPLES as u64 + 50) {
            samples.push(Sample {
                at: 1000 + i * 10,
                bytes_up: i * 100,
                bytes_down: i * 1000,
                connections: i,
                live_streams: 3,
            });
        }
        let rates = samples.rates(Sample::default());
        assert_eq!(rates.len(), SAMPLES);
        assert_eq!(rates[0].up_per_sec, 10.0);
        assert_eq!(rates[0].down_per_sec, 100.0);
        assert_eq!(rates[0].connections_per_sec, 0.1);
        assert_eq!(rates.last().unwrap().at, 1000 + (SAMPLES as u64 + 49) * 10);
        // The counters now, 5 s after the last sample: one more point.
        let last_at = 1000 + (SAMPLES as u64 + 49) * 10;
        let now = Sample {
            at: last_at + 5,
            bytes_up: (SAMPLES as u64 + 49) * 100 + 50,
            bytes_down: (SAMPLES as u64 + 49) * 1000,
            connections: SAMPLES as u64 + 49,
            live_streams: 4,
        };
        let with_now = samples.rates(now);
        assert_eq!(with_now.len(), SAMPLES + 1);
        assert_eq!(with_now.last().unwrap().up_per_sec, 10.0);
        assert_eq!(with_now.last().unwrap().live_streams, 4);
        // A reset: the counters fall; the rate is zero, not negative.
        samples.push(Sample {
            at: last_at + 10,
            ..Sample::default()
        });
        let after_reset = samples.rates(Sample::default());
        assert_eq!(after_reset.last().unwrap().down_per_sec, 0.0);
    }
}
