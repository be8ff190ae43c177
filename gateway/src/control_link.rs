//! The gateway's link to the control plane's store (`exitpool-control`,
//! docs/control.md): what it loads into the in-memory accounts view, what it
//! writes to the usage history, and the `/api/v1` router the admin port
//! mounts.
//!
//! Nothing here is on a connection's path. One task ([`run`]) does, once a
//! second and at once when told of a change: poll [`Store::revision`] and,
//! when it moved, load [`Store::snapshot`] and swap the customers whole into
//! [`crate::accounts::Accounts`]; drain the usage counted since the last
//! tick ([`History`]) into one [`Store::record_batch`]; and refresh the
//! period quotas of the accounts that moved bytes ([`crate::quota`]).
//!
//! Changes are pushed, the poll is the fallback: a write through this
//! gateway's API marks [`Store::changes`], and on PostgreSQL every write of
//! any gateway is announced with `NOTIFY` ([`Store::change_notices`], one
//! listening connection kept by [`follow_notices`]), so a change is in force
//! fleet-wide as soon as each gateway has read the snapshot. A notice lost
//! (the listening connection dropped) costs at most one [`TICK`]. Every
//! database call has a timeout; a database that stalls or is unreachable
//! leaves the last view in force (logged, counted in
//! `exitpool_control_failures_total`, named on `/readyz`), and the usage it
//! could not take waits in memory, bounded by [`MAX_PENDING_RECORDS`]: past
//! that the oldest batches are dropped and counted
//! (`exitpool_control_dropped_records_total`).

use crate::auth::{Customer, Limits, Users};
use crate::config::GatewayConfig;
use crate::usage::History;
use arc_swap::ArcSwap;
use exitpool_control::store::{AccountEntry, Snapshot, UsageRecord};
use exitpool_control::{AccountRef, Backend, Store};

/// The control crate, for callers (the binary, tests) that need its types.
pub use exitpool_control;
pub use exitpool_control::store::SQLITE_FILE;
pub use exitpool_control::Retention;
use std::collections::{HashMap, VecDeque};
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tracing::{info, warn};

/// How often the revision is polled and usage written.
pub const TICK: Duration = Duration::from_secs(1);
/// Longest one database call may take before the tick gives up on it.
pub const DB_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest opening the store (and its migrations) may take at start.
pub const OPEN_TIMEOUT: Duration = Duration::from_secs(30);
/// Usage records held in memory while the database cannot take them (about
/// 200 bytes each: some 200 MB at most). Past it the oldest batch is dropped.
pub const MAX_PENDING_RECORDS: usize = 1_000_000;

/// What the gateway's flags say about the control plane.
#[derive(Debug, Clone, Default)]
pub struct ControlOptions {
    /// `--database`: a SQLite path, `sqlite:` URL or `postgres://` URL;
    /// `None` for no store (accounts from flags and files only).
    pub database: Option<String>,
    /// How long usage history is kept.
    pub retention: Retention,
    /// `--admin-readonly-token`: may only `GET` under `/api/v1`.
    pub read_only_token: Option<String>,
    /// Threshold notices (`--webhook-url`, `--webhook-secret`).
    pub webhook: Option<crate::webhooks::WebhookConfig>,
}

/// One account's period quotas as the store last counted them: what the
/// quota leases of [`crate::quota`] take from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeriodQuota {
    /// This gateway's [`History::local_bytes`] of the account when `left`
    /// was counted.
    pub base: u64,
    /// The least any of its periods (and its customer's) had left then.
    pub left: u64,
    /// The period that leaves least: `daily`, `monthly` or `lifetime`, and
    /// whose (the account's or its customer's).
    pub period: &'static str,
    /// When that period resets (Unix seconds); `None` for lifetime.
    pub resets_at: Option<i64>,
}

impl PeriodQuota {
    /// The quota as a lease sees it: bytes this gateway may count in
    /// [`History::local_bytes`] before the account runs out.
    pub fn effective(&self) -> u64 {
        self.base.saturating_add(self.left)
    }
}

/// Counters for `/metrics`.
#[derive(Debug, Default)]
struct LinkCounters {
    failures: AtomicU64,
    swaps: AtomicU64,
    records_written: AtomicU64,
    records_dropped: AtomicU64,
    pending: AtomicU64,
}

/// The link: the store, the accounts it serves, the usage on its way there.
pub struct ControlLink {
    store: Store,
    /// `--users FILE`, when a file (not the store) owns the accounts.
    users_file: Option<PathBuf>,
    /// Customers built from the last snapshot.
    users: ArcSwap<Users>,
    /// Banned exits from the last snapshot (fleet-wide).
    exit_bans: ArcSwap<Vec<exitpool_control::store::ExitBan>>,
    /// The snapshot's accounts by name (limits, parent), for quotas.
    entries: ArcSwap<HashMap<String, AccountEntry>>,
    revision: AtomicI64,
    /// Why the last tick failed, and since when; `None` while all is well.
    stalled: Mutex<Option<(Instant, String)>>,
    /// Usage counted since the last tick.
    pub history: Arc<History>,
    /// Period quotas by account.
    quotas: ArcSwap<HashMap<String, PeriodQuota>>,
    /// The `/api/v1` router; `None` without `--admin-token`.
    router: Option<axum::Router>,
    counters: LinkCounters,
    /// Batches the database has not taken yet, oldest first.
    pending: tokio::sync::Mutex<VecDeque<Vec<UsageRecord>>>,
    pub(crate) webhooks: Option<crate::webhooks::Webhooks>,
}

impl std::fmt::Debug for ControlLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlLink")
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

/// `future`, or an error after [`DB_TIMEOUT`].
async fn bounded<T>(
    what: &str,
    future: impl std::future::Future<Output = exitpool_control::Result<T>>,
) -> Result<T, String> {
    match tokio::time::timeout(DB_TIMEOUT, future).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(error)) => Err(format!("{what}: {error}")),
        Err(_) => Err(format!(
            "{what}: no answer within {} s",
            DB_TIMEOUT.as_secs()
        )),
    }
}

impl ControlLink {
    /// Opens the store `options` name (if any) for a gateway configured as
    /// `config`: refuses a SQLite store beside `--redis`, loads the first
    /// snapshot when the store owns the accounts, and builds the router.
    pub async fn open(
        config: &GatewayConfig,
        options: &ControlOptions,
    ) -> Result<Option<Arc<ControlLink>>, String> {
        let Some(location) = &options.database else {
            return Ok(None);
        };
        let opened =
            tokio::time::timeout(OPEN_TIMEOUT, Store::open(location, options.retention)).await;
        let store = match opened {
            Ok(Ok(store)) => store,
            Ok(Err(error)) => return Err(error.to_string()),
            Err(_) => {
                return Err(format!(
                    "database {}: not open within {} s",
                    exitpool_control::store::redact(location),
                    OPEN_TIMEOUT.as_secs()
                ))
            }
        };
        if config.fleet.is_some() && store.backend() == Backend::Sqlite {
            store.close().await;
            return Err(format!(
                "--redis with a SQLite store ({}): a SQLite file belongs to one gateway, so the \
                 fleet's gateways would each hold different accounts; give every gateway the same \
                 --database postgres://... (or use --users FILE without --database)",
                exitpool_control::store::redact(location)
            ));
        }
        let users_file = config.users_file.clone();
        let router = config.admin_token.as_ref().map(|token| {
            exitpool_control::router_with(
                store.clone(),
                exitpool_control::ApiTokens {
                    admin: token.expose().to_owned(),
                    read_only: options.read_only_token.clone(),
                },
                users_file.as_ref().map(|path| path.display().to_string()),
            )
        });
        let link = ControlLink {
            store,
            users_file,
            users: ArcSwap::from_pointee(Users::default()),
            exit_bans: ArcSwap::from_pointee(Vec::new()),
            entries: ArcSwap::from_pointee(HashMap::new()),
            revision: AtomicI64::new(-1),
            stalled: Mutex::new(None),
            history: Arc::new(History::default()),
            quotas: ArcSwap::from_pointee(HashMap::new()),
            router,
            counters: LinkCounters::default(),
            pending: Default::default(),
            webhooks: webhooks_for(options).await?,
        };
        if link.serves_accounts() {
            let snapshot = bounded("loading the accounts", link.store.snapshot()).await?;
            link.adopt(snapshot);
            let names: Vec<String> = link.entries.load().keys().cloned().collect();
            link.refresh_quotas(&names, &HashMap::new(), exitpool_control::period::now())
                .await?;
        }
        info!(
            backend = ?link.store.backend(),
            accounts = if link.serves_accounts() { "the database" } else { "the --users file" },
            api = link.router.is_some(),
            "control plane store open"
        );
        Ok(Some(Arc::new(link)))
    }

    /// Whether threshold notices are sent (`--webhook-url` at start).
    pub fn has_webhook(&self) -> bool {
        self.webhooks.is_some()
    }

    /// Sends later threshold notices to `config`'s URL, signed with its
    /// secret (a re-read config file); an error when the gateway started
    /// without a webhook (its queue is made at start) or `config` is unusable.
    pub async fn set_webhook(&self, config: crate::webhooks::WebhookConfig) -> Result<(), String> {
        let Some(webhooks) = &self.webhooks else {
            return Err("the gateway started without --webhook-url".into());
        };
        let destination =
            tokio::task::spawn_blocking(move || crate::webhooks::Destination::new(config))
                .await
                .map_err(|e| format!("--webhook-url: {e}"))??;
        webhooks.set_destination(destination);
        Ok(())
    }

    /// Whether the store owns the accounts (no `--users` file).
    pub fn serves_accounts(&self) -> bool {
        self.users_file.is_none()
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Customers from the last snapshot.
    pub fn users(&self) -> Arc<Users> {
        self.users.load_full()
    }

    /// Banned exits from the last snapshot; `None` before the first one.
    pub fn exit_bans(&self) -> Option<Arc<Vec<exitpool_control::store::ExitBan>>> {
        (self.revision.load(Ordering::Relaxed) >= 0).then(|| self.exit_bans.load_full())
    }

    /// The `/api/v1` router, when the admin port has a token.
    pub fn router(&self) -> Option<&axum::Router> {
        self.router.as_ref()
    }

    /// `user`'s period quotas, if it (or its customer) has any.
    pub fn period_quota(&self, user: &str) -> Option<PeriodQuota> {
        self.quotas.load().get(user).cloned()
    }

    /// A snapshot's account by name.
    pub fn entry(&self, user: &str) -> Option<AccountEntry> {
        self.entries.load().get(user).cloned()
    }

    /// Why the link is not keeping up, for `/readyz` and `/healthz`.
    pub fn stalled(&self) -> Option<String> {
        let stalled = self.stalled.lock().unwrap_or_else(|e| e.into_inner());
        stalled.as_ref().map(|(since, why)| {
            format!(
                "database unreachable for {} s ({why}); serving the last accounts view, usage waits in memory",
                since.elapsed().as_secs()
            )
        })
    }

    fn set_stalled(&self, why: Option<String>) {
        let mut stalled = self.stalled.lock().unwrap_or_else(|e| e.into_inner());
        match (why, stalled.is_some()) {
            (Some(why), was) => {
                if !was {
                    warn!(error = %why, "control plane database unreachable: keeping the last accounts view");
                }
                self.counters.failures.fetch_add(1, Ordering::Relaxed);
                let since = stalled
                    .as_ref()
                    .map_or_else(Instant::now, |(since, _)| *since);
                *stalled = Some((since, why));
            }
            (None, true) => {
                info!("control plane database reachable again");
                *stalled = None;
            }
            (None, false) => {}
        }
    }

    /// Prometheus lines for `/metrics` (OpenMetrics counters and a gauge).
    pub fn render_metrics(&self) -> String {
        let c = &self.counters;
        format!(
            "# TYPE exitpool_control_failures counter\n\
             # HELP exitpool_control_failures Control-plane ticks whose database calls failed or timed out.\n\
             exitpool_control_failures_total {}\n\
             # TYPE exitpool_control_account_swaps counter\n\
             # HELP exitpool_control_account_swaps Account snapshots swapped into the view.\n\
             exitpool_control_account_swaps_total {}\n\
             # TYPE exitpool_control_records_written counter\n\
             # HELP exitpool_control_records_written Usage records written to the history.\n\
             exitpool_control_records_written_total {}\n\
             # TYPE exitpool_control_dropped_records counter\n\
             # HELP exitpool_control_dropped_records Usage records dropped because the database could not take them in time.\n\
             exitpool_control_dropped_records_total {}\n\
             # TYPE exitpool_control_pending_records gauge\n\
             # HELP exitpool_control_pending_records Usage records waiting for the database.\n\
             exitpool_control_pending_records {}\n\
             # TYPE exitpool_control_stalled gauge\n\
             # HELP exitpool_control_stalled 1 while the database is unreachable.\n\
             exitpool_control_stalled {}\n",
            c.failures.load(Ordering::Relaxed),
            c.swaps.load(Ordering::Relaxed),
            c.records_written.load(Ordering::Relaxed),
            c.records_dropped.load(Ordering::Relaxed),
            c.pending.load(Ordering::Relaxed),
            u8::from(self.stalled().is_some()),
        )
    }

    /// Takes `snapshot` as the accounts in force (the customers the view swaps in).
    fn adopt(&self, snapshot: Snapshot) {
        self.exit_bans.store(Arc::new(snapshot.bans));
        if !self.serves_accounts() {
            // A `--users` file owns the accounts; the store still owns bans.
            self.revision.store(snapshot.revision, Ordering::Relaxed);
            return;
        }
        let entries: HashMap<String, AccountEntry> = snapshot
            .accounts
            .into_iter()
            .map(|entry| (entry.name.clone(), entry))
            .collect();
        let users = Users::new(
            entries
                .values()
                .filter_map(|entry| customer_of(entry, &entries)),
        )
        .with_cache_of(&self.users.load());
        self.users.store(Arc::new(users));
        self.entries.store(Arc::new(entries));
        self.revision.store(snapshot.revision, Ordering::Relaxed);
        self.counters.swaps.fetch_add(1, Ordering::Relaxed);
    }

    /// Recounts the period quotas of `names` from the store (which, when
    /// called after a flush, holds every byte [`History::local_bytes`] counted
    /// before it); `bases` holds what [`History::local_bytes`] said before
    /// that flush (an account not in it reads it now).
    async fn refresh_quotas(
        &self,
        names: &[String],
        bases: &HashMap<String, u64>,
        now: i64,
    ) -> Result<(), String> {
        let entries = self.entries.load_full();
        let mut quotas = (**self.quotas.load()).clone();
        // Accounts gone from the snapshot lose their entry.
        quotas.retain(|name, _| entries.contains_key(name));
        let mut usage_cache: HashMap<String, exitpool_control::store::PeriodUsage> = HashMap::new();
        for name in names {
            let Some(entry) = entries.get(name) else {
                quotas.remove(name);
                continue;
            };
            let parent = entry.customer.as_ref().and_then(|c| entries.get(c));
            let has_quota = |e: &AccountEntry| {
                e.limits.quota_daily.is_some()
                    || e.limits.quota_monthly.is_some()
                    || e.limits.quota_lifetime.is_some()
            };
            if !has_quota(entry) && !parent.is_some_and(has_quota) {
                quotas.remove(name);
                continue;
            }
            let base = bases
                .get(name)
                .copied()
                .unwrap_or_else(|| self.history.local_bytes(name));
            let mut best: Option<(u64, &'static str, Option<i64>)> = None;
            for account in std::iter::once(entry).chain(parent) {
                if !has_quota(account) {
                    continue;
                }
                let usage = match usage_cache.get(&account.name) {
                    Some(usage) => *usage,
                    None => {
                        let who = account_ref(account);
                        let usage =
                            bounded("counting quota periods", self.store.period_usage(who, now))
                                .await?;
                        usage_cache.insert(account.name.clone(), usage);
                        usage
                    }
                };
                for (period, quota, used, resets) in
                    exitpool_control::store::quota_periods(&account.limits, usage, now)
                {
                    let Some(quota) = quota else { continue };
                    let left = quota.saturating_sub(used);
                    if best.is_none_or(|(least, _, _)| left < least) {
                        best = Some((left, period, resets));
                    }
                }
            }
            if let Some((left, period, resets_at)) = best {
                if let Some(webhooks) = &self.webhooks {
                    webhooks.check(entry, parent, &usage_cache, now);
                }
                quotas.insert(
                    name.clone(),
                    PeriodQuota {
                        base,
                        left,
                        period,
                        resets_at,
                    },
                );
            }
        }
        self.quotas.store(Arc::new(quotas));
        Ok(())
    }

    /// Writes the usage counted so far (and what earlier ticks could not),
    /// batch by batch, oldest first; on a failure the rest waits for the
    /// next call. Called every tick and once more at shutdown.
    pub async fn flush(&self, now: i64) -> Result<(), String> {
        let mut pending = self.pending.lock().await;
        let drained = self.history.drain(now);
        if !drained.is_empty() {
            for batch in drained.chunks(exitpool_control::store::MAX_BATCH) {
                pending.push_back(batch.to_vec());
            }
        }
        let mut held: usize = pending.iter().map(Vec::len).sum();
        while held > MAX_PENDING_RECORDS {
            if let Some(oldest) = pending.pop_front() {
                held -= oldest.len();
                self.counters
                    .records_dropped
                    .fetch_add(oldest.len() as u64, Ordering::Relaxed);
                warn!(
                records = oldest.len(),
                "usage history: dropped the oldest batch; the database has not taken usage for too long"
            );
            }
        }
        self.counters.pending.store(held as u64, Ordering::Relaxed);
        while let Some(batch) = pending.front() {
            let outcome = match tokio::time::timeout(DB_TIMEOUT, self.store.record_batch(batch))
                .await
            {
                Ok(Ok(outcome)) => outcome,
                // A batch the store refuses as such would block every later one:
                // it is dropped (and counted), not retried.
                Ok(Err(exitpool_control::Error::Invalid { field, message })) => {
                    warn!(%field, %message, records = batch.len(), "usage history: the store refused a batch; dropped");
                    self.counters
                        .records_dropped
                        .fetch_add(batch.len() as u64, Ordering::Relaxed);
                    held -= batch.len();
                    pending.pop_front();
                    continue;
                }
                Ok(Err(error)) => return Err(format!("writing usage: {error}")),
                Err(_) => {
                    return Err(format!(
                        "writing usage: no answer within {} s",
                        DB_TIMEOUT.as_secs()
                    ))
                }
            };
            if !outcome.unknown_accounts.is_empty() {
                tracing::debug!(accounts = ?outcome.unknown_accounts, "usage of deleted accounts left out");
            }
            self.counters
                .records_written
                .fetch_add(outcome.recorded as u64, Ordering::Relaxed);
            held -= batch.len();
            self.counters.pending.store(held as u64, Ordering::Relaxed);
            pending.pop_front();
        }
        Ok(())
    }
}

/// The threshold notices' queue when `--webhook-url` is given; its
/// destination (an `https://` URL's roots are files) is made off the runtime.
async fn webhooks_for(
    options: &ControlOptions,
) -> Result<Option<crate::webhooks::Webhooks>, String> {
    let Some(config) = options.webhook.clone() else {
        return Ok(None);
    };
    let destination =
        tokio::task::spawn_blocking(move || crate::webhooks::Destination::new(config))
            .await
            .map_err(|e| format!("--webhook-url: {e}"))??;
    Ok(Some(crate::webhooks::Webhooks::new(destination)))
}

/// Which account `entry` is, for the store's calls.
fn account_ref(entry: &AccountEntry) -> AccountRef<'_> {
    match (&entry.customer, entry.name.split_once('.')) {
        (Some(customer), Some((sub, _))) => AccountRef::SubUser { customer, sub },
        _ => AccountRef::Customer(&entry.name),
    }
}

/// The gateway's customer for a snapshot entry: `None` for a disabled
/// account (or a sub-user of a disabled customer), which then cannot log in.
/// A sub-user gets the stricter of its own and its customer's limits: its
/// source must be in both `allow_ips` lists, and both `blocked_domains` lists
/// apply. (The store's `allow_ips` restricts where an account connects from,
/// so it maps onto `connect_from`, not onto the users file's credential-free
/// `allow_ips`.)
fn customer_of(entry: &AccountEntry, all: &HashMap<String, AccountEntry>) -> Option<Customer> {
    if !entry.enabled {
        return None;
    }
    let parent = match &entry.customer {
        Some(name) => Some(all.get(name).filter(|parent| parent.enabled)?),
        None => None,
    };
    let own = &entry.limits;
    let least = |mine: Option<u64>, theirs: Option<u64>| match (mine, theirs) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    let theirs = parent.map(|p| &p.limits);
    let countries = if !own.countries.is_empty() {
        Some(own.countries.clone())
    } else {
        theirs
            .filter(|limits| !limits.countries.is_empty())
            .map(|limits| limits.countries.clone())
    };
    let max_connections = least(own.max_connections, theirs.and_then(|l| l.max_connections))
        .map(|n| u32::try_from(n).unwrap_or(u32::MAX));
    let requests_per_second = least(
        own.requests_per_second,
        theirs.and_then(|l| l.requests_per_second),
    )
    .and_then(|n| NonZeroU32::new(u32::try_from(n).unwrap_or(u32::MAX)));
    let with_parent = || std::iter::once(own).chain(theirs);
    let connect_from = with_parent()
        .map(|limits| limits.networks())
        .filter(|networks| !networks.is_empty())
        .collect();
    let blocked_domains = with_parent()
        .flat_map(|limits| limits.blocked_domains.iter().cloned())
        .collect();
    match Customer::hashed(&entry.name, &entry.password_hash) {
        Ok(customer) => Some(customer.with_limits(Limits {
            countries,
            max_connections,
            requests_per_second,
            connect_from,
            blocked_domains,
            ..Limits::default()
        })),
        Err(error) => {
            warn!(account = %entry.name, %error, "an account in the database has an unusable password hash; it cannot log in");
            None
        }
    }
}

/// The link's task: poll, swap, write usage, refresh quotas, once a
/// [`TICK`] and at once on a change ([`Store::changes`], the store's
/// notices), until `shutdown`; then one last write of the usage counted.
/// `accounts_changed` tells the gateway that a new snapshot (accounts and
/// exit bans) is in; the webhooks' sender runs in `tasks`. (The link is handed these
/// rather than the gateway's shared state, which holds the link.)
pub async fn run(
    link: Arc<ControlLink>,
    tasks: tokio_util::task::TaskTracker,
    shutdown: tokio_util::sync::CancellationToken,
    accounts_changed: impl Fn() + Send,
) {
    if let Some(webhooks) = &link.webhooks {
        if let Some(notices) = webhooks.take_receiver() {
            tasks.spawn(crate::webhooks::send_all(
                webhooks.destination(),
                notices,
                shutdown.clone(),
            ));
        }
    }
    if link.exit_bans().is_some() {
        // The snapshot loaded at start (its exit bans) reaches the gateway.
        accounts_changed();
    }
    // Changes this gateway's own API commits, and (PostgreSQL) every
    // gateway's through the store's notices.
    let mut own_changes = link.store.changes();
    let noticed = Arc::new(tokio::sync::Notify::new());
    if link.store.backend() == Backend::Postgres {
        tasks.spawn(follow_notices(
            link.store.clone(),
            noticed.clone(),
            shutdown.clone(),
        ));
    }
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_prune = None::<Instant>;
    loop {
        let stopping = tokio::select! {
            _ = tick.tick() => false,
            Ok(()) = own_changes.changed() => false,
            () = noticed.notified() => false,
            () = shutdown.cancelled() => true,
        };
        let now = exitpool_control::period::now();
        let result = tick_once(&link, &accounts_changed, now).await;
        link.set_stalled(result.err());
        if stopping {
            break;
        }
        if last_prune.is_none_or(|at| at.elapsed() > Duration::from_secs(3600)) {
            last_prune = Some(Instant::now());
            if let Err(error) = bounded("pruning the history", link.store.prune(now)).await {
                warn!(%error, "pruning usage history failed; will retry in an hour");
            }
        }
    }
}

/// Keeps a listening connection on the store's change notices (PostgreSQL)
/// and wakes [`run`] on each, until `shutdown`. A lost or failed connection
/// is made again after a [`TICK`] (the poll covers the gap), and [`run`] is
/// woken then too, for a notice the gap may have swallowed.
async fn follow_notices(
    store: Store,
    noticed: Arc<tokio::sync::Notify>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let mut failing = false;
    loop {
        let connected = tokio::select! {
            connected = bounded("listening for changes", store.change_notices()) => connected,
            () = shutdown.cancelled() => return,
        };
        match connected {
            Ok(Some(mut notices)) => {
                if failing {
                    info!("listening for the store's change notices again");
                }
                noticed.notify_one();
                loop {
                    let next = tokio::select! {
                        next = notices.next() => next,
                        () = shutdown.cancelled() => return,
                    };
                    match next {
                        // A lost connection (false) may have swallowed a
                        // notice: look now; the next call reconnects.
                        Ok(_) => noticed.notify_one(),
                        Err(error) => {
                            warn!(%error, "the store's change notices stopped; the revision poll covers until they are back");
                            failing = true;
                            break;
                        }
                    }
                }
            }
            Ok(None) => return,
            Err(error) => {
                if !failing {
                    warn!(%error, "cannot listen for the store's change notices; the revision poll covers until it can");
                    failing = true;
                }
            }
        }
        tokio::select! {
            () = tokio::time::sleep(TICK) => {}
            () = shutdown.cancelled() => return,
        }
    }
}

/// One tick (see [`run`]): write the usage, then (when the store owns the
/// accounts) poll the revision and recount the quotas. A new snapshot's
/// customers are swapped into the gateway's view only once their quotas are
/// counted, so no connection of theirs runs without its lease.
async fn tick_once(
    link: &ControlLink,
    accounts_changed: &(impl Fn() + Send),
    now: i64,
) -> Result<(), String> {
    let active = link.history.active_accounts();
    // Read before the write: bytes counted in between are then in the
    // store's count and in what this gateway counts after `base`, twice,
    // which errs towards cutting early, never late.
    let bases: HashMap<String, u64> = active
        .iter()
        .map(|name| (name.clone(), link.history.local_bytes(name)))
        .collect();
    // The usage is written even when the accounts cannot be read: it then
    // waits in memory, counted, until the database takes it.
    let flushed = link.flush(now).await;
    let revision = bounded("polling the revision", link.store.revision()).await?;
    if !link.serves_accounts() {
        // Only the exit bans come from the store.
        if revision != link.revision.load(Ordering::Relaxed) {
            link.adopt(bounded("loading the exit bans", link.store.snapshot()).await?);
            accounts_changed();
        }
        return flushed;
    }
    if revision != link.revision.load(Ordering::Relaxed) {
        let snapshot = bounded("loading the accounts", link.store.snapshot()).await?;
        link.adopt(snapshot);
        let names: Vec<String> = link.entries.load().keys().cloned().collect();
        let counted = link.refresh_quotas(&names, &bases, now).await;
        accounts_changed();
        counted?;
    } else if flushed.is_ok() && !active.is_empty() {
        // Quotas are recounted only once the store holds every byte counted here.
        link.refresh_quotas(&active, &bases, now).await?;
    }
    flushed
}

/// `/readyz`'s text: `ready`, and when the database is unreachable, that
/// the gateway serves the last accounts view (still ready: a connection
/// never waits on the database).
pub fn ready_text(link: Option<&ControlLink>) -> String {
    match link.and_then(|link| link.stalled()) {
        None => "ready\n".into(),
        Some(why) => format!("ready; {why}\n"),
    }
}

/// The Prometheus text of `/metrics` with the link's figures added before
/// its closing `# EOF`.
pub fn add_metrics(link: Option<&ControlLink>, mut text: String) -> String {
    let Some(link) = link else {
        return text;
    };
    let ours = link.render_metrics();
    match text.rfind("# EOF") {
        Some(at) => text.insert_str(at, &ours),
        None => text.push_str(&ours),
    }
    text
}
