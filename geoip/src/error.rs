//! Errors from loading a GeoIP database. Each one names the database at fault: its
//! path, or its place in the list handed to [`GeoIp::from_bytes`](crate::GeoIp::from_bytes).

use std::io;
use std::path::PathBuf;

/// Why a set of GeoIP databases could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum GeoIpError {
    /// The list of databases was empty; a `GeoIp` that answers nothing is a setup mistake.
    #[error("no GeoIP database given")]
    NoDatabase,
    /// The file could not be read (missing, unreadable, a directory, ...).
    #[error("cannot read GeoIP database {}", path.display())]
    Read {
        /// The file that could not be read.
        path: PathBuf,
        /// What the operating system said.
        #[source]
        source: io::Error,
    },
    /// The bytes are not a MaxMind DB file the reader accepts (bad metadata, truncated, ...).
    #[error("{database} is not a valid MaxMind DB (.mmdb) file")]
    Invalid {
        /// The file path, or `in-memory database #N` (counting from 0) for
        /// [`GeoIp::from_bytes`](crate::GeoIp::from_bytes).
        database: String,
        /// What the reader found wrong.
        #[source]
        source: maxminddb::MaxMindDbError,
    },
}
