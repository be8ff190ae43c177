//! One way to reach an exit: [`Exits`] holds the directory of agents and the
//! tunnels this gateway holds, keeps the two in step (an agent is admitted with
//! its tunnel and leaves with it), and opens a relay stream to an exit
//! wherever its tunnel is: on a tunnel here, or through whoever serves
//! remote exits ([`RemoteExits`]: in a fleet, the peer link to the gateway
//! holding it). Customers ask it for a stream and never learn which it was.

use super::{ExitStream, Tunnels};
use crate::directory::{Agent, AgentDirectory, Joining};
use crate::error::ProxyError;
use exitpool_protocol::TargetHost;
use exitpool_transport::Tunnel;
use prometheus_client::metrics::counter::Counter;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// A relay stream being opened on another gateway.
pub type RemoteOpen<'a> = Pin<Box<dyn Future<Output = Result<ExitStream, ProxyError>> + Send + 'a>>;

/// Opens relay streams to exits whose tunnels other gateways hold (the fleet
/// registers itself as one, [`Exits::serve_remote`]).
pub trait RemoteExits: Send + Sync {
    /// A stream to `agent_id`, held by gateway `home`, dialled to
    /// `host:port`; the other gateway's answer within `timeout`.
    fn open<'a>(
        &'a self,
        home: &'a Arc<str>,
        agent_id: &'a str,
        host: TargetHost,
        port: u16,
        timeout: Duration,
    ) -> RemoteOpen<'a>;
}

/// How a local exit's tunnel is watched while a customer waits on it.
pub struct Liveness {
    /// How often the tunnel is checked while an answer is slow to come.
    pub every: Duration,
    /// How long a check waits for the tunnel's answer.
    pub within: Duration,
    /// Checks made (`exitpool_liveness_checks_total`).
    pub checks: Counter,
    /// Tunnels dropped for not answering one.
    pub unresponsive: Counter,
}

/// The exits this gateway can reach: who they are, and how.
pub struct Exits {
    directory: Box<dyn AgentDirectory>,
    tunnels: Tunnels,
    remote: OnceLock<Arc<dyn RemoteExits>>,
    liveness: Liveness,
}

impl Exits {
    /// Exits listed in `directory`, with no tunnel held yet and none
    /// elsewhere until [`Exits::serve_remote`].
    pub fn new(directory: Box<dyn AgentDirectory>, liveness: Liveness) -> Exits {
        Exits {
            directory,
            tunnels: Tunnels::default(),
            remote: OnceLock::new(),
            liveness,
        }
    }

    /// Streams to exits whose tunnel `home` is another gateway go through
    /// `remote` from now on (set once, at start-up).
    pub fn serve_remote(&self, remote: Arc<dyn RemoteExits>) {
        let _ = self.remote.set(remote);
    }

    /// Who is connected, where, with what load.
    pub fn directory(&self) -> &dyn AgentDirectory {
        self.directory.as_ref()
    }

    /// The tunnels held by this process.
    pub fn tunnels(&self) -> &Tunnels {
        &self.tunnels
    }

    /// An agent whose tunnel this gateway holds: the tunnel in the table
    /// first (an agent routing can see is always reachable), then the
    /// directory entry. An entry it replaces is returned with its tunnel
    /// still held: the caller decides whether to close it.
    pub fn admit(&self, tunnel: &Tunnel, joining: Joining) -> (Arc<Agent>, Option<Arc<Agent>>) {
        let key = self.tunnels.add(tunnel.clone());
        self.directory.insert(key, joining)
    }

    /// An agent whose tunnel another gateway holds (`joining.home`).
    pub fn admit_remote(&self, joining: Joining) -> (Arc<Agent>, Option<Arc<Agent>>) {
        self.directory.insert(self.tunnels.reserve_key(), joining)
    }

    /// An agent that left: its directory entry and its tunnel handle.
    pub fn forget(&self, key: u64) {
        self.directory.remove(key);
        self.tunnels.remove(key);
    }

    /// Sends an agent away: out of the directory, its tunnel (if held here)
    /// closed with `code` and `reason`.
    pub fn disconnect(&self, key: u64, code: u32, reason: &[u8]) {
        self.directory.remove(key);
        self.tunnels.close(key, code, reason);
    }

    /// Opens a relay stream through `agent` to `host:port` and waits up to
    /// `timeout` for the exit's answer. A local exit's tunnel is checked
    /// while the answer is slow to come, so a vanished exit fails in seconds
    /// ([`ProxyError::ExitLost`]), not at the tunnel's idle timeout; a
    /// remote one is its own gateway's to watch.
    pub async fn open(
        &self,
        agent: &Arc<Agent>,
        host: TargetHost,
        port: u16,
        timeout: Duration,
    ) -> Result<ExitStream, ProxyError> {
        if let Some(home) = &agent.home {
            let Some(remote) = self.remote.get() else {
                return Err(ProxyError::PeerUnavailable(format!(
                    "gateway {home}: no peer links on this gateway"
                )));
            };
            return remote
                .open(home, &agent.agent_id, host, port, timeout)
                .await;
        }
        let watchdog = async {
            loop {
                tokio::time::sleep(self.liveness.every).await;
                if !self.check_alive(agent).await {
                    return;
                }
            }
        };
        tokio::select! {
            opened = self.tunnels.open(agent.key, host, port, timeout) => opened,
            () = watchdog => Err(ProxyError::ExitLost(
                "the exit's tunnel did not answer a liveness check".into(),
            )),
        }
    }

    /// Asks the tunnel of `agent`, on which a customer is waiting, whether it
    /// is alive ([`Tunnels::is_alive`]). A tunnel that does not answer is
    /// closed: its agent leaves the directory and every stream on it is
    /// reset, so waiting customers fail (and their opens move to other exits)
    /// in seconds rather than at the idle timeout. An exit of another gateway
    /// is that gateway's to watch.
    pub async fn check_alive(&self, agent: &Agent) -> bool {
        if !agent.is_local() {
            return true;
        }
        self.liveness.checks.inc();
        if self.tunnels.is_alive(agent.key, self.liveness.within).await {
            return true;
        }
        tracing::warn!(exit = %agent.exit_id, "exit's tunnel failed a liveness check; dropping it");
        self.liveness.unresponsive.inc();
        self.disconnect(
            agent.key,
            exitpool_protocol::close_code::UNRESPONSIVE,
            b"no answer to a liveness check",
        );
        false
    }
}
