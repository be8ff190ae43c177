//! Fixtures of the control plane's tests: fresh stores on both backends
//! (a SQLite file in a temporary directory; a database of its own in one
//! throwaway PostgreSQL cluster per test binary run) and the API served on
//! 127.0.0.1:0.

#![allow(dead_code)]

use exitpool_control::{ApiTokens, Retention, Store};
use exitpool_launcher::postgres::PostgresServer;
use std::net::SocketAddr;
use std::time::Duration;

/// Bound on starting PostgreSQL (initdb included).
pub const PG_START: Duration = Duration::from_secs(60);
/// Bound on a whole suite or API test.
pub const TEST_BOUND: Duration = Duration::from_secs(240);

/// Makes fresh stores on one backend.
pub struct Fresh {
    dir: tempfile::TempDir,
    postgres: Option<PostgresServer>,
    made: usize,
}

impl Fresh {
    /// SQLite files in a temporary directory.
    pub fn sqlite() -> Fresh {
        Fresh {
            dir: tempfile::tempdir().expect("temporary directory"),
            postgres: None,
            made: 0,
        }
    }

    /// Databases in a throwaway PostgreSQL cluster.
    pub async fn postgres() -> Fresh {
        let server = PostgresServer::start(PG_START)
            .await
            .expect("PostgreSQL starts (scripts/test installs Debian's postgresql)");
        Fresh {
            dir: tempfile::tempdir().expect("temporary directory"),
            postgres: Some(server),
            made: 0,
        }
    }

    /// Where the next fresh store will be (a file path or a URL), its database created.
    pub async fn location(&mut self) -> String {
        self.made += 1;
        match &self.postgres {
            None => self
                .dir
                .path()
                .join(format!("store{}.sqlite3", self.made))
                .to_string_lossy()
                .into_owned(),
            Some(server) => server
                .create_database(&format!("store{}", self.made))
                .await
                .expect("createdb"),
        }
    }

    /// A fresh, empty store.
    pub async fn store(&mut self) -> Store {
        self.store_with(Retention::default()).await
    }

    /// A fresh, empty store with `retention`.
    pub async fn store_with(&mut self, retention: Retention) -> Store {
        let location = self.location().await;
        Store::open(&location, retention)
            .await
            .expect("store opens")
    }

    /// Stops the PostgreSQL cluster, if there is one.
    pub async fn stop(mut self) {
        if let Some(server) = self.postgres.as_mut() {
            server.stop().await.expect("PostgreSQL stops");
        }
    }
}

/// The admin and read-only tokens of the served API.
pub const ADMIN: &str = "admin-token-0123456789abcdef0123456789";
/// The read-only token.
pub const READER: &str = "read-only-token-0123456789abcdef012345";

/// The router over `store`, served on 127.0.0.1:0; stops when the task is dropped.
pub struct Served {
    /// Where it listens.
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Served {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Served {
    /// `/api/v1...` on it.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

/// Serves the API over `store`.
pub async fn serve(store: Store) -> Served {
    let router = exitpool_control::router(
        store,
        ApiTokens {
            admin: ADMIN.into(),
            read_only: Some(READER.into()),
        },
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1:0");
    let addr = listener.local_addr().expect("local address");
    let task = tokio::spawn(async move {
        axum::serve(listener, router).await.expect("serve");
    });
    Served { addr, task }
}

/// An HTTP client that never waits long.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .no_proxy()
        .build()
        .expect("client")
}
