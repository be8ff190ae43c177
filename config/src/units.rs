//! Values as people write them in a configuration file (or a flag): durations
//! `15s`, `500ms`, `2m` (`humantime`); sizes `10GB`, `500KB`, `1GiB` and rates
//! `2MB/s` (`bytesize`: KB/MB/GB are powers of 1000, KiB/MiB/GiB of 1024; a
//! plain integer is bytes). Each error says how to write the value instead.

use std::num::NonZeroU32;
use std::time::Duration;

/// A duration as people write it: `15s`, `500ms`, `2m`, `1h 30m`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim())
        .map_err(|e| format!("{text:?} is not a duration ({e}); write e.g. 15s, 500ms or 2m"))
}

/// A size: `10GB`, `500KB`, `1GiB`, or a plain number of bytes.
pub fn parse_size(text: &str) -> Result<u64, String> {
    text.trim()
        .parse::<bytesize::ByteSize>()
        .map(|size| size.as_u64())
        .map_err(|_| format!("{text:?} is not a size; write e.g. 10GB, 500MB or 1GiB"))
}

/// A rate per direction: `2MB/s`, `500KB/s`, or a plain number of bytes per
/// second; `0` is refused (leave the key out for no cap). At most 4 GB/s.
pub fn parse_rate(text: &str) -> Result<NonZeroU32, String> {
    let size = text.trim().strip_suffix("/s").unwrap_or(text);
    let bytes = parse_size(size)
        .map_err(|_| format!("{text:?} is not a rate; write e.g. 2MB/s or 500KB/s"))?;
    let bytes = u32::try_from(bytes)
        .map_err(|_| format!("{text:?} is more than the largest cap, 4GB/s"))?;
    NonZeroU32::new(bytes).ok_or_else(|| {
        format!("{text:?} would stop all traffic; leave the cap out for none, or pause")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_rates_and_durations_read_as_written() {
        assert_eq!(parse_size("500KB"), Ok(500_000));
        assert_eq!(parse_size("1 MiB"), Ok(1 << 20));
        assert_eq!(parse_size("123"), Ok(123));
        assert!(parse_size("lots").is_err());
        assert_eq!(parse_rate("2MB/s").map(NonZeroU32::get), Ok(2_000_000));
        assert_eq!(parse_rate("1000").map(NonZeroU32::get), Ok(1000));
        assert!(parse_rate("0").is_err());
        assert!(parse_rate("5GB/s").is_err());
        assert_eq!(parse_duration("1h 30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert!(parse_duration("15").is_err());
    }
}
