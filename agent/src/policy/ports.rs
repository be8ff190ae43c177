//! Ports in the exit policy: [`PortRange`] (as the command line writes it,
//! `25` or `8000-8100`) and the mail ports every agent refuses by default.

use std::fmt;
use std::str::FromStr;

/// Ports refused by [`ExitPolicy::new`](super::ExitPolicy::new): SMTP (25), SMTPS (465) and mail
/// submission (587). Residential exits that relay mail get their owners'
/// addresses onto spam block lists, so mail is off unless the operator says so.
pub const DEFAULT_DENIED_PORTS: [PortRange; 3] = [
    PortRange::single(25),
    PortRange::single(465),
    PortRange::single(587),
];

/// An inclusive range of TCP ports, `first..=last`. A single port has
/// `first == last`. A range built by hand with `first > last` matches nothing;
/// [`FromStr`] refuses such input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    /// Lowest port in the range.
    pub first: u16,
    /// Highest port in the range, inclusive.
    pub last: u16,
}

impl PortRange {
    /// The range holding just `port`.
    pub const fn single(port: u16) -> Self {
        Self {
            first: port,
            last: port,
        }
    }

    /// Whether `port` lies in `first..=last`.
    pub const fn contains(&self, port: u16) -> bool {
        self.first <= port && port <= self.last
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
    }
}

/// Why a port range (a command-line value such as `8000-8100`) did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PortRangeError {
    /// Nothing was given on one side (e.g. `""`, `"-80"`, `"80-"`).
    #[error("empty port: expected a port such as 25 or a range such as 8000-8100")]
    Empty,
    /// A side holds something other than decimal digits.
    #[error("{text:?} is not a port number: expected digits 0-65535, e.g. 25 or 8000-8100")]
    NotANumber {
        /// The offending side, as written.
        text: String,
    },
    /// A side is a number above 65535.
    #[error("port {text} is out of range: ports go from 0 to 65535")]
    OutOfRange {
        /// The offending side, as written.
        text: String,
    },
    /// The range runs backwards.
    #[error("port range {first}-{last} runs backwards: write the lower port first")]
    Reversed {
        /// Left side as parsed.
        first: u16,
        /// Right side as parsed.
        last: u16,
    },
}

impl FromStr for PortRange {
    type Err = PortRangeError;

    /// Parses `"25"` or `"8000-8100"`. Whitespace around the whole value and
    /// around the `-` is ignored; signs, hex and anything else are refused.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        match s.split_once('-') {
            None => parse_port(s).map(Self::single),
            Some((first, last)) => {
                let first = parse_port(first.trim())?;
                let last = parse_port(last.trim())?;
                if first > last {
                    return Err(PortRangeError::Reversed { first, last });
                }
                Ok(Self { first, last })
            }
        }
    }
}

/// One side of a port range: decimal digits only (no `+`, which `u16::from_str`
/// would accept), at most 65535.
fn parse_port(text: &str) -> Result<u16, PortRangeError> {
    if text.is_empty() {
        return Err(PortRangeError::Empty);
    }
    if !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(PortRangeError::NotANumber {
            text: text.to_owned(),
        });
    }
    text.parse().map_err(|_| PortRangeError::OutOfRange {
        text: text.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_range_parsing() {
        assert_eq!("25".parse(), Ok(PortRange::single(25)));
        assert_eq!(" 0 ".parse(), Ok(PortRange::single(0)));
        assert_eq!("65535".parse(), Ok(PortRange::single(65535)));
        assert_eq!(
            "8000-8100".parse(),
            Ok(PortRange {
                first: 8000,
                last: 8100
            })
        );
        assert_eq!(
            "8000 - 8100".parse(),
            Ok(PortRange {
                first: 8000,
                last: 8100
            })
        );
        assert_eq!("443-443".parse(), Ok(PortRange::single(443)));
        let bad: &[(&str, PortRangeError)] = &[
            ("", PortRangeError::Empty),
            ("-80", PortRangeError::Empty),
            ("80-", PortRangeError::Empty),
            ("+25", PortRangeError::NotANumber { text: "+25".into() }),
            (
                "0x19",
                PortRangeError::NotANumber {
                    text: "0x19".into(),
                },
            ),
            (
                "smtp",
                PortRangeError::NotANumber {
                    text: "smtp".into(),
                },
            ),
            ("1-2-3", PortRangeError::NotANumber { text: "2-3".into() }),
            (
                "65536",
                PortRangeError::OutOfRange {
                    text: "65536".into(),
                },
            ),
            (
                "99999999999999999999",
                PortRangeError::OutOfRange {
                    text: "99999999999999999999".into(),
                },
            ),
            (
                "8100-8000",
                PortRangeError::Reversed {
                    first: 8100,
                    last: 8000,
                },
            ),
        ];
        for (text, expected) in bad {
            assert_eq!(
                text.parse::<PortRange>().as_ref(),
                Err(expected),
                "{text:?}"
            );
        }
        let msg = "8100-8000".parse::<PortRange>().unwrap_err().to_string();
        assert!(msg.contains("lower port first"), "{msg}");
        let msg = "smtp".parse::<PortRange>().unwrap_err().to_string();
        assert!(msg.contains("\"smtp\" is not a port number"), "{msg}");
        // Display round-trips.
        for text in ["25", "8000-8100"] {
            assert_eq!(text.parse::<PortRange>().unwrap().to_string(), text);
        }
    }
}
