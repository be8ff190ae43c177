//! Why the agent could not reach a gateway ([`super::reach_gateway`]): one
//! attempt's failure, the race's two, or every gateway's, typed so the
//! reconnect loop and tests can tell the causes apart; the
//! [`Display`](std::fmt::Display) is the log line's words.

use std::fmt;
use std::net::SocketAddr;

/// Why reaching a gateway failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReachError {
    /// No gateway name gave an address to try: each name's failure.
    Resolve(Vec<String>),
    /// The QUIC connection failed (quinn's words).
    Quic(String),
    /// A step of the TLS/TCP tunnel's set-up failed: which (`TCP socket`,
    /// `binding ADDR`, `TCP connect to ADDR`, `TLS handshake`, `HTTP/2
    /// handshake`) and the error's text.
    Tcp {
        /// The step that failed.
        step: String,
        /// Its error.
        error: String,
    },
    /// A transport's handshake did not finish within the handshake timeout
    /// (`QUIC` or `TLS/TCP`).
    TimedOut(&'static str),
    /// Both transports of the race failed.
    Race {
        /// QUIC's failure.
        quic: Box<ReachError>,
        /// TLS/TCP's failure.
        tcp: Box<ReachError>,
    },
    /// Every gateway address failed, each with its failure, in the order tried.
    Every(Vec<(SocketAddr, ReachError)>),
}

impl ReachError {
    /// A failed step of the TLS/TCP set-up.
    pub fn tcp(step: impl Into<String>, error: &dyn fmt::Display) -> ReachError {
        ReachError::Tcp {
            step: step.into(),
            error: error.to_string(),
        }
    }
}

impl fmt::Display for ReachError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReachError::Resolve(failures) => f.write_str(&failures.join("; ")),
            ReachError::Quic(error) => f.write_str(error),
            ReachError::Tcp { step, error } => write!(f, "{step}: {error}"),
            ReachError::TimedOut(transport) => write!(f, "{transport} handshake timed out"),
            ReachError::Race { quic, tcp } => write!(f, "QUIC: {quic}; TLS/TCP: {tcp}"),
            ReachError::Every(failures) => {
                for (index, (address, error)) in failures.iter().enumerate() {
                    if index > 0 {
                        f.write_str("; ")?;
                    }
                    write!(f, "{address}: {error}")?;
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_words_are_the_log_lines() {
        let race = ReachError::Race {
            quic: Box::new(ReachError::TimedOut("QUIC")),
            tcp: Box::new(ReachError::tcp("TCP connect to 127.0.0.1:4433", &"refused")),
        };
        let every = ReachError::Every(vec![
            ("127.0.0.1:4433".parse().unwrap(), race),
            (
                "127.0.0.2:4433".parse().unwrap(),
                ReachError::Quic("lost".into()),
            ),
        ]);
        assert_eq!(
            every.to_string(),
            "127.0.0.1:4433: QUIC: QUIC handshake timed out; TLS/TCP: TCP connect to \
             127.0.0.1:4433: refused; 127.0.0.2:4433: lost"
        );
        let unresolved = ReachError::Resolve(vec!["a: no".into(), "b: no".into()]);
        assert_eq!(unresolved.to_string(), "a: no; b: no");
    }
}
