//! One metered transfer for every customer protocol: the bytes of a `CONNECT`
//! tunnel, a SOCKS5 connection or a plain-HTTP exchange through one exit.
//!
//! The byte path bumps the transfer's [`LiveCounters`] per chunk (the relay loop
//! for TCP tunnels, [`MeteredIo`] under hyper's client for plain HTTP). While it
//! runs, [`Transfer::supervise`] folds the bytes since the last fold into usage
//! every [`FOLD_INTERVAL`] and cuts the work off, within that interval, once the
//! account's quota is used up. [`Transfer::finish`] folds the rest, adds the
//! bytes to the exit's live figures and writes the one access line. From start
//! to end the transfer is in the live list ([`crate::live`]), where an operator
//! may close it.

use super::session::Authorized;
use crate::access::{AccessLog, AccessRecord};
use crate::directory::{Agent, Outcome, StreamGuard};
use crate::limits::Slot;
use crate::quota::Lease;
use crate::shared::{Accounting, Shared};
use crate::tunnel::ExitStream;
use bytes::Bytes;
use exitpool_transport::relay::{relay, Direction, LiveCounters, RelayError, Throttle};
use exitpool_transport::TunnelSend;
use hyper_util::rt::TokioIo;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tracing::warn;

/// How often a live transfer folds its byte counts into usage and checks the quota.
pub const FOLD_INTERVAL: Duration = Duration::from_secs(1);

/// Why a transfer was cut short by the gateway rather than by either end.
pub const QUOTA_CUT: &str = "quota exhausted";
/// Why a transfer ended when an operator closed it (`DELETE /api/v1/connections/...`).
pub const CLOSED_BY_OPERATOR: &str = "closed by the operator";
/// Why a transfer ended when its exit's tunnel failed a liveness check.
pub const EXIT_DEAD: &str = "the exit's tunnel did not answer a liveness check";

/// How a transfer ended other than cleanly: the access line's `result` (its
/// [`Display`](std::fmt::Display)) and, unless an operator closed it, one
/// `relay_failed` in the errors metric.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransferEnd {
    /// The account's quota ran out ([`QUOTA_CUT`]).
    QuotaCut,
    /// An operator closed it ([`CLOSED_BY_OPERATOR`]): no failure of anyone's.
    ClosedByOperator,
    /// Its exit's tunnel failed a liveness check ([`EXIT_DEAD`]).
    ExitDead,
    /// The relay or exchange failed: the customer's side, the exit stream or
    /// the target, in the byte path's words.
    Failed(String),
}

impl TransferEnd {
    /// The errors metric's code for an abnormal end (the operators chapter
    /// documents it).
    pub const ERROR_CODE: &'static str = "relay_failed";

    /// A stable code for the end: `quota_exhausted`, `closed_by_operator`,
    /// `exit_dead` or `relay_failed`.
    pub fn code(&self) -> &'static str {
        match self {
            TransferEnd::QuotaCut => "quota_exhausted",
            TransferEnd::ClosedByOperator => "closed_by_operator",
            TransferEnd::ExitDead => "exit_dead",
            TransferEnd::Failed(_) => Self::ERROR_CODE,
        }
    }

    /// Whether the end counts as a failure in the errors metric (an
    /// operator's close is no failure of the relay or the exit).
    pub fn is_failure(&self) -> bool {
        *self != TransferEnd::ClosedByOperator
    }
}

impl std::fmt::Display for TransferEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TransferEnd::QuotaCut => QUOTA_CUT,
            TransferEnd::ClosedByOperator => CLOSED_BY_OPERATOR,
            TransferEnd::ExitDead => EXIT_DEAD,
            TransferEnd::Failed(why) => why,
        })
    }
}

/// The words of an end, for byte paths that still carry a `String`.
impl From<TransferEnd> for String {
    fn from(end: TransferEnd) -> String {
        end.to_string()
    }
}

/// An end told as words (a byte path's `String` error): the gateway's own
/// ends by their text, anything else a [`TransferEnd::Failed`].
impl From<String> for TransferEnd {
    fn from(why: String) -> TransferEnd {
        match why.as_str() {
            QUOTA_CUT => TransferEnd::QuotaCut,
            CLOSED_BY_OPERATOR => TransferEnd::ClosedByOperator,
            EXIT_DEAD => TransferEnd::ExitDead,
            _ => TransferEnd::Failed(why),
        }
    }
}

/// Resolves once the exit of a transfer is found dead; never while it lives.
///
/// A transfer waits on its exit when the customer has sent bytes the exit has
/// not answered, or when bytes were flowing from the exit and stopped. After
/// [`crate::config::GatewayConfig::silence_check`] of that silence the exit's
/// tunnel is checked: again every period while the customer's bytes stay
/// unanswered, once for a flow that stopped. A transfer idle on both sides
/// after a check costs nothing more, so idle agents see no extra traffic.
async fn watch_exit(agent: &Agent, counters: &LiveCounters, shared: &Shared) {
    let check_after = shared.config.silence_check;
    // Looking four times per period bounds how late silence is noticed. The
    // first look is one period in: an interval's immediate first tick is a
    // timer the runtime must be woken for, once per connection, to learn
    // nothing (the counters were read just now).
    let period = (check_after / 4).max(Duration::from_millis(5));
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    let mut up = counters.to_tunnel.load(Ordering::Relaxed);
    let mut down = counters.from_tunnel.load(Ordering::Relaxed);
    let mut changed = Instant::now();
    let mut expecting = true;
    let mut unanswered = false;
    loop {
        tick.tick().await;
        let (now_up, now_down) = (
            counters.to_tunnel.load(Ordering::Relaxed),
            counters.from_tunnel.load(Ordering::Relaxed),
        );
        if now_down != down {
            (down, up, changed) = (now_down, now_up, Instant::now());
            (expecting, unanswered) = (true, false);
        } else if now_up != up {
            (up, changed) = (now_up, Instant::now());
            (expecting, unanswered) = (true, true);
        }
        if !expecting || changed.elapsed() < check_after {
            continue;
        }
        if !shared.routing.exits.check_alive(agent).await {
            return;
        }
        changed = Instant::now();
        expecting = unanswered;
    }
}

/// What the access log says about a transfer besides byte counts.
#[derive(Debug, Clone)]
pub(crate) struct AccessContext {
    /// Base user name (never the password or targeting parameters' secrets).
    pub user: String,
    /// Customer address.
    pub peer: SocketAddr,
    /// `host:port` as the customer named it.
    pub target: String,
    /// When the customer's request arrived.
    pub started: Instant,
    /// How the customer asked: `connect`, `socks5` or `http` (the live list shows it).
    pub protocol: &'static str,
}

/// One customer transfer through one exit, metered from the first byte to the last.
pub(crate) struct Transfer {
    agent: Arc<Agent>,
    counters: Arc<LiveCounters>,
    context: AccessContext,
    /// What has already gone into usage.
    folded_up: u64,
    folded_down: u64,
    /// The bytes the quota still allows, for a customer with one: the byte
    /// path moves nothing it has not taken from here ([`crate::quota`]).
    lease: Option<Arc<Lease>>,
    /// Its place in the live list ([`crate::live`]), left when dropped.
    live: Option<crate::live::Registration>,
    /// Held for the life of the transfer: the exit's load and the customer's slot.
    _load: StreamGuard,
    _slot: Slot,
}

impl Transfer {
    /// Starts metering the exit stream of `authorized` (with a quota lease
    /// when its account has a quota); returns the stream for the byte path
    /// to use.
    pub fn start(
        authorized: Authorized,
        context: AccessContext,
        shared: &Shared,
    ) -> (Transfer, ExitStream) {
        let Authorized {
            agent,
            stream,
            load,
            slot,
            session: _,
            attempts: _,
        } = authorized;
        let transfer = Transfer::start_flows(agent, load, slot, context, &shared.accounting);
        (transfer, stream)
    }

    /// Starts metering a SOCKS5 UDP association (`socks_udp`) through
    /// `agent`: [`Transfer::start`] without a stream, as each UDP flow opens
    /// its own; the byte path bumps [`Transfer::counters`] with datagram
    /// payload bytes.
    pub fn start_flows(
        agent: Arc<Agent>,
        load: StreamGuard,
        slot: Slot,
        context: AccessContext,
        accounting: &Accounting,
    ) -> Transfer {
        let quota = accounting.quota_of(&context.user);
        let lease = quota
            .map(|quota| Arc::new(accounting.limits.quota_leases().open(&context.user, quota)));
        let counters: Arc<LiveCounters> = Arc::default();
        let live = accounting.live.register(
            crate::live::NewLive {
                user: context.user.clone(),
                peer: context.peer,
                target: context.target.clone(),
                exit_id: agent.exit_id.clone(),
                country: agent.location.country.clone(),
                protocol: context.protocol,
            },
            counters.clone(),
        );
        Transfer {
            agent,
            counters,
            context,
            folded_up: 0,
            folded_down: 0,
            lease,
            live,
            _load: load,
            _slot: slot,
        }
    }

    /// The counters the byte path bumps.
    pub fn counters(&self) -> &Arc<LiveCounters> {
        &self.counters
    }

    /// Bytes either way so far.
    pub fn total(&self) -> u64 {
        self.counters.total()
    }

    /// The byte path's gate for this transfer: takes each chunk from the
    /// quota lease, if there is one.
    pub fn quota_gate<'a>(&self, shared: &'a Shared) -> QuotaGate<'a> {
        QuotaGate {
            lease: self
                .lease
                .clone()
                .map(|lease| (lease, self.context.user.clone())),
            shared,
        }
    }

    /// Runs `work` to its end, folding usage every [`FOLD_INTERVAL`]; once the
    /// quota lease is cut (nothing left of the quota), or the account's quota
    /// is used up at a fold, drops `work` and answers
    /// [`TransferEnd::QuotaCut`]. When the exit goes silent on a waiting
    /// customer, its tunnel is checked ([`watch_exit`]); a dead one ends
    /// `work` with [`TransferEnd::ExitDead`]. An operator's close
    /// ([`crate::live`]) ends it with [`TransferEnd::ClosedByOperator`].
    /// Ends travel as their words here, as the byte paths' errors are words;
    /// [`TransferEnd::from`] reads them back.
    pub async fn supervise<T>(
        &mut self,
        work: impl Future<Output = Result<T, String>>,
        shared: &Shared,
    ) -> Result<T, String> {
        tokio::pin!(work);
        let (agent, counters) = (self.agent.clone(), self.counters.clone());
        let watchdog = watch_exit(&agent, &counters, shared);
        tokio::pin!(watchdog);
        let mut fold_timer =
            tokio::time::interval_at(tokio::time::Instant::now() + FOLD_INTERVAL, FOLD_INTERVAL);
        let lease = self.lease.clone();
        let cut = async {
            match &lease {
                Some(lease) => lease.cut().await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(cut);
        let closing = self.live.as_ref().map(|live| live.closing());
        let closed = async {
            match closing {
                Some(closing) => closing.cancelled_owned().await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(closed);
        loop {
            tokio::select! {
                result = &mut work => break result,
                () = &mut cut => break Err(TransferEnd::QuotaCut.into()),
                () = &mut closed => break Err(TransferEnd::ClosedByOperator.into()),
                () = &mut watchdog => {
                    shared.report_outcome(&self.agent, Outcome::ExitFailed);
                    break Err(TransferEnd::ExitDead.into());
                }
                _ = fold_timer.tick() => {
                    self.fold(&shared.accounting);
                    if exhausted_quota(&self.context.user, &shared.accounting).is_some() {
                        break Err(TransferEnd::QuotaCut.into());
                    }
                }
            }
        }
    }

    /// Records the bytes counted since the last fold (and settles them
    /// against the quota lease, now that usage counts them).
    fn fold(&mut self, accounting: &Accounting) {
        let up = self.counters.to_tunnel.load(Ordering::Relaxed);
        let down = self.counters.from_tunnel.load(Ordering::Relaxed);
        let (new_up, new_down) = (
            up.saturating_sub(self.folded_up),
            down.saturating_sub(self.folded_down),
        );
        accounting.record_transfer(Some(&self.context.user), &self.agent, new_up, new_down);
        if let Some(link) = accounting.accounts.control() {
            let context = &self.context;
            link.history.transfer(
                &context.user,
                &self.agent,
                &context.target,
                new_up,
                new_down,
            );
        }
        if let Some(lease) = &self.lease {
            lease.settle(new_up + new_down);
        }
        self.folded_up = self.folded_up.max(up);
        self.folded_down = self.folded_down.max(down);
    }

    /// Ends the transfer: folds the last bytes, adds them to the exit's live
    /// figures, counts an abnormal end, and writes the access line (with the
    /// plain-HTTP request's method and answered status where there are some).
    /// Releases the exit's load and the customer's slot.
    pub fn finish<E: Clone + Into<TransferEnd>>(
        mut self,
        result: &Result<(), E>,
        exchange: Option<(&hyper::Method, u16)>,
        accounting: &Accounting,
    ) {
        let end = ended(result);
        let (up, down) = self.account(end.as_ref(), accounting);
        if !AccessLog::enabled() {
            return;
        }
        let context = self.context;
        accounting.access_log.write(AccessRecord {
            user: context.user,
            peer: context.peer,
            method: exchange.map(|(method, _)| method.clone()),
            target: context.target,
            exit: self.agent,
            status: exchange.map(|(_, status)| status),
            bytes_up: up,
            bytes_down: down,
            duration: context.started.elapsed(),
            failure: end.map(|end| end.to_string()),
        });
    }
    /// Like [`Transfer::finish`] without the access line, for a plain-HTTP
    /// exchange that was never answered (the refusal's log line stands for it).
    pub fn finish_unlogged<E: Clone + Into<TransferEnd>>(
        mut self,
        result: &Result<(), E>,
        shared: &Shared,
    ) {
        self.account(ended(result).as_ref(), &shared.accounting);
    }

    /// Folds the last bytes, adds them to the exit's live figures and counts an
    /// abnormal `end`; returns the bytes up and down.
    fn account(&mut self, end: Option<&TransferEnd>, accounting: &Accounting) -> (u64, u64) {
        self.fold(accounting);
        let up = self.counters.to_tunnel.load(Ordering::Relaxed);
        let down = self.counters.from_tunnel.load(Ordering::Relaxed);
        self.agent.bytes_up.fetch_add(up, Ordering::Relaxed);
        self.agent.bytes_down.fetch_add(down, Ordering::Relaxed);
        if end.is_some_and(TransferEnd::is_failure) {
            let user = Some(self.context.user.as_str());
            accounting.record_error_code(user, Some(&self.agent), TransferEnd::ERROR_CODE);
        }
        (up, down)
    }
}

/// How `result` ended, if not cleanly.
fn ended<E: Clone + Into<TransferEnd>>(result: &Result<(), E>) -> Option<TransferEnd> {
    result.as_ref().err().map(|end| end.clone().into())
}

/// The relay's [`Throttle`] for one transfer: each chunk is taken from the
/// transfer's quota lease first; a chunk the quota has no room for waits
/// forever, and [`Transfer::supervise`] ends the relay as the lease is cut.
pub(crate) struct QuotaGate<'a> {
    /// The lease and whose it is, for a customer with a quota.
    lease: Option<(Arc<Lease>, String)>,
    shared: &'a Shared,
}

impl Throttle for QuotaGate<'_> {
    async fn pass(&self, _direction: Direction, bytes: usize) {
        let Some((lease, user)) = &self.lease else {
            return;
        };
        if !lease.take(bytes as u64, || self.shared.accounting.used_by(user)) {
            std::future::pending::<()>().await;
        }
    }
}

/// The account's quota, if `user` has used it up (as the accounts stand now).
pub(crate) fn exhausted_quota(user: &str, accounting: &Accounting) -> Option<u64> {
    let quota = accounting.quota_of(user)?;
    (accounting.used_by(user) >= quota).then_some(quota)
}

/// A customer's connection: plain TCP, or TLS over TCP on an HTTPS proxy port.
pub(crate) trait CustomerStream: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// The reading half, for the relay's upstream copy.
    type Read<'a>: AsyncRead + Unpin + Send
    where
        Self: 'a;
    /// The writing half, for the relay's downstream copy.
    type Write<'a>: AsyncWrite + Unpin + Send
    where
        Self: 'a;
    /// Both halves, so each direction runs on its own.
    fn halves(&mut self) -> (Self::Read<'_>, Self::Write<'_>);
    /// The TCP connection underneath (to reset it on a failed relay).
    fn tcp(&self) -> &TcpStream;
}

impl CustomerStream for TcpStream {
    type Read<'a> = tokio::net::tcp::ReadHalf<'a>;
    type Write<'a> = tokio::net::tcp::WriteHalf<'a>;
    fn halves(&mut self) -> (Self::Read<'_>, Self::Write<'_>) {
        self.split()
    }
    fn tcp(&self) -> &TcpStream {
        self
    }
}

impl CustomerStream for tokio_rustls::server::TlsStream<TcpStream> {
    type Read<'a> = tokio::io::ReadHalf<&'a mut Self>;
    type Write<'a> = tokio::io::WriteHalf<&'a mut Self>;
    fn halves(&mut self) -> (Self::Read<'_>, Self::Write<'_>) {
        tokio::io::split(self)
    }
    fn tcp(&self) -> &TcpStream {
        self.get_ref().0
    }
}

/// Relays a hyper-upgraded `CONNECT` connection.
pub(crate) async fn relay_upgraded<S: CustomerStream>(
    upgraded: hyper::upgrade::Upgraded,
    authorized: Authorized,
    context: AccessContext,
    shared: &Shared,
) {
    match upgraded.downcast::<TokioIo<S>>() {
        // Bytes the client sent right behind its CONNECT head (a TLS ClientHello,
        // say) are already in hyper's buffer: they go first.
        Ok(parts) => {
            relay_tcp(
                parts.io.into_inner(),
                parts.read_buf,
                authorized,
                context,
                shared,
            )
            .await
        }
        Err(_) => warn!("upgraded connection is not the customer's stream; closing"),
    }
}

/// Relays the customer's `stream` to the exit, after sending `already_read`
/// towards the target. On an abnormal end the customer sees a TCP reset, never a
/// clean end of data.
pub(crate) async fn relay_tcp<S: CustomerStream>(
    mut stream: S,
    already_read: Bytes,
    authorized: Authorized,
    context: AccessContext,
    shared: &Shared,
) {
    let (read, write) = stream.halves();
    let result = relay_halves(read, write, already_read, authorized, context, shared).await;
    // A clean end has already shut the customer's side down (the relay
    // carries the exit's end of data across); only a failure needs more.
    if result.is_err() {
        let _ = socket2::SockRef::from(stream.tcp()).set_linger(Some(Duration::ZERO));
    }
}

/// The one metered relay under every customer tunnel: a TCP (or TLS)
/// connection's halves, or an HTTP/2 `CONNECT` stream's
/// ([`super::http2`]). Sends `already_read` towards the target first, relays
/// until both sides are done, and accounts the transfer. On `Err` the exit
/// stream has been reset; the caller makes the customer's side end in an
/// error too (a TCP reset, an HTTP/2 `RST_STREAM`).
pub(crate) async fn relay_halves<R, W>(
    read: R,
    write: W,
    already_read: Bytes,
    authorized: Authorized,
    context: AccessContext,
    shared: &Shared,
) -> Result<(), TransferEnd>
where
    R: AsyncRead + Unpin + Send,
    W: AsyncWrite + Unpin + Send,
{
    let (mut transfer, exit) = Transfer::start(authorized, context, shared);
    let ExitStream {
        mut send,
        recv,
        peer: _,
    } = exit;
    let counters = transfer.counters().clone();
    let agent = transfer.agent.clone();
    let gate = transfer.quota_gate(shared);
    // Bytes that came with the request (a ClientHello) are counted, not
    // leased: the quota was checked a moment ago, and they are few.
    counters
        .to_tunnel
        .fetch_add(already_read.len() as u64, Ordering::Relaxed);
    let result = match send.write_chunk(already_read).await {
        Err(error) => Err(TransferEnd::Failed(error.to_string())),
        Ok(()) => {
            let relaying = async {
                let (_, result) = relay(
                    read,
                    write,
                    send,
                    recv,
                    shared.settings().idle_timeout,
                    &counters,
                    &gate,
                )
                .await;
                if let Err(RelayError::Tunnel(error)) = &result {
                    shared.report_relay_failure(&agent, error);
                }
                result.map_err(|e| e.to_string())
            };
            transfer
                .supervise(relaying, shared)
                .await
                .map_err(TransferEnd::from)
        }
    };
    transfer.finish(&result, None, &shared.accounting);
    result
}

/// An exit stream as hyper's client sees it for plain HTTP, counting bytes per
/// read and write into the transfer's counters, as the relay loop does.
pub(crate) struct MeteredIo<T> {
    inner: T,
    counters: Arc<LiveCounters>,
    /// The transfer's quota lease, whose it is, and where usage is read.
    lease: Option<(Arc<Lease>, String, Arc<Shared>)>,
}

impl<T> MeteredIo<T> {
    /// Meters `inner` into `transfer`'s counters, taking every byte from its
    /// quota lease if it has one.
    pub fn new(inner: T, transfer: &Transfer, shared: &Arc<Shared>) -> Self {
        MeteredIo {
            inner,
            counters: transfer.counters.clone(),
            lease: transfer
                .lease
                .clone()
                .map(|lease| (lease, transfer.context.user.clone(), shared.clone())),
        }
    }

    /// How many of `bytes` the quota lets move now (all without a quota).
    fn allowed(&self, bytes: usize) -> usize {
        match &self.lease {
            None => bytes,
            Some((lease, user, shared)) => {
                lease.take_up_to(bytes as u64, || shared.accounting.used_by(user)) as usize
            }
        }
    }
}

/// What a plain-HTTP exchange's byte path answers once the quota is spent.
fn quota_spent() -> io::Error {
    io::Error::other(QUOTA_CUT)
}

impl<T: AsyncRead + Unpin> AsyncRead for MeteredIo<T> {
    /// Bytes beyond what the quota allows are dropped here, and the read
    /// after them fails: the customer gets no byte past the quota.
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        let read = buf.filled().len() - before;
        let allowed = if read == 0 { 0 } else { self.allowed(read) };
        if allowed < read {
            buf.set_filled(before + allowed);
        }
        self.counters
            .from_tunnel
            .fetch_add(allowed as u64, Ordering::Relaxed);
        if read > 0 && allowed == 0 {
            return Poll::Ready(Err(quota_spent()));
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for MeteredIo<T> {
    /// Writes at most what the quota allows; once it is spent, fails.
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let allowed = match self.lease {
            None => buf.len(),
            Some(_) if buf.is_empty() => 0,
            Some(_) => match self.allowed(buf.len()) {
                0 => return Poll::Ready(Err(quota_spent())),
                allowed => allowed,
            },
        };
        let polled = Pin::new(&mut self.inner).poll_write(cx, &buf[..allowed]);
        let written = match polled {
            Poll::Ready(Ok(written)) => written,
            _ => 0,
        };
        if written > 0 {
            self.counters
                .to_tunnel
                .fetch_add(written as u64, Ordering::Relaxed);
        }
        // What did not move is written again later, and taken again: the
        // lease keeps it, or the quota would be spent on bytes never sent.
        if written < allowed {
            if let Some((lease, _, _)) = &self.lease {
                lease.give_back((allowed - written) as u64);
            }
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ends_keep_their_words_and_codes_both_ways() {
        let ends = [
            (TransferEnd::QuotaCut, "quota_exhausted", true),
            (TransferEnd::ClosedByOperator, "closed_by_operator", false),
            (TransferEnd::ExitDead, "exit_dead", true),
            (
                TransferEnd::Failed("reset by peer".into()),
                "relay_failed",
                true,
            ),
        ];
        for (end, code, failure) in ends {
            assert_eq!(end.code(), code);
            assert_eq!(end.is_failure(), failure, "{end:?}");
            // A byte path that carries words gets the same end back.
            assert_eq!(TransferEnd::from(String::from(end.clone())), end);
        }
        assert_eq!(TransferEnd::QuotaCut.to_string(), QUOTA_CUT);
    }
}
