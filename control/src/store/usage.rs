//! Usage history: the batch a gateway writes (off its hot path, about once a
//! second), retention, the history queries, and the quota periods.
//!
//! A batch is folded in memory into its buckets (account x hour, account x
//! day, account x hour x error code, account x day x registrable domain,
//! exit x day, account lifetime) and upserted in one transaction: a batch is
//! in the history whole or not at all. A customer's usage and quotas include
//! its sub-users'; a sub-user's are its own.

use super::{AccountRef, Store};
use crate::error::{Error, Result};
use crate::period::{
    date, day_start, hour_start, month_start, next_month_start, rfc3339, DAY, HOUR,
};
use serde::{Deserialize, Serialize};
use sqlx::Row;
use std::collections::{BTreeMap, HashMap};
use utoipa::ToSchema;

/// Most records in one batch.
pub const MAX_BATCH: usize = 100_000;
/// Most buckets one history query answers.
pub const MAX_BUCKETS: i64 = 2232;
/// Domains shown per account and day.
pub const TOP_DOMAINS: i64 = 100;
/// Domains kept per account and day (more than shown, so one that climbs
/// late in the day has a tally to climb from).
const KEPT_DOMAINS: i64 = 1000;
/// Longest error code or exit id recorded.
const MAX_KEY_LEN: usize = 128;

/// What a gateway accounted for one account in one second (or one
/// connection): bytes, connections, how those that failed failed, which exit
/// and which target.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UsageRecord {
    /// When, Unix seconds.
    pub at: i64,
    /// The user name (`alice`, `ops.alice`).
    pub account: String,
    /// The exit's device id, if one carried it.
    pub exit: Option<String>,
    /// The target host as the client named it (`www.example.co.uk`, an address).
    pub target: Option<String>,
    /// Bytes from the client to the target.
    pub bytes_up: u64,
    /// Bytes from the target to the client.
    pub bytes_down: u64,
    /// Connections (or streams) counted.
    pub connections: u64,
    /// The error code those connections failed with, if they failed.
    pub error: Option<String>,
}

/// What a batch did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatchOutcome {
    /// Records folded into the history.
    pub recorded: usize,
    /// User names no account has (deleted since): their records were left out.
    pub unknown_accounts: Vec<String>,
}

/// Rows removed by [`Store::prune`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PruneOutcome {
    /// Hourly rows (usage and errors).
    pub hourly: u64,
    /// Daily rows (accounts and exits).
    pub daily: u64,
    /// Domain rows.
    pub domains: u64,
}

/// A history bucket's width.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Step {
    /// One hour (kept 90 days by default).
    Hour,
    /// One UTC day (kept two years by default).
    Day,
}

impl Step {
    fn seconds(self) -> i64 {
        match self {
            Step::Hour => HOUR,
            Step::Day => DAY,
        }
    }
}

/// One bucket of an account's history.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct UsageBucket {
    /// Its start (RFC 3339, UTC).
    pub start: String,
    /// Bytes from clients.
    pub bytes_up: u64,
    /// Bytes to clients.
    pub bytes_down: u64,
    /// Connections.
    pub connections: u64,
    /// Failed connections by error code (hourly data: within the hourly retention).
    pub errors: BTreeMap<String, u64>,
}

/// Bytes to one registrable domain on one day.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DomainUsage {
    /// The registrable domain (`example.co.uk`), or an address.
    pub domain: String,
    /// Bytes up plus down.
    pub bytes: u64,
}

/// One exit's day.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ExitDay {
    /// The UTC day (`2026-12-07`).
    pub day: String,
    /// Bytes up plus down.
    pub bytes: u64,
    /// Streams carried.
    pub streams: u64,
}

/// Bytes (up plus down) an account moved in the quota periods.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PeriodUsage {
    /// This UTC day.
    pub today: u64,
    /// This UTC calendar month.
    pub month: u64,
    /// Over the account's life.
    pub lifetime: u64,
}

/// A quota that ran out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Exhausted {
    /// The account whose quota it is (a sub-user's customer's counts too).
    pub account: String,
    /// `daily`, `monthly` or `lifetime`.
    pub period: String,
    /// The quota, bytes.
    pub quota: u64,
    /// Bytes used in the period.
    pub used: u64,
    /// When the period starts again (RFC 3339); absent for lifetime.
    pub resets_at: Option<String>,
    /// The same as Unix seconds, for a `Retry-After`.
    pub resets_at_unix: Option<i64>,
}

/// An account's period usage and the first quota that ran out, if any.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct QuotaStatus {
    /// The account's own periods (a customer's include its sub-users').
    pub usage: PeriodUsage,
    /// The quota that ran out, if one did.
    pub exhausted: Option<Exhausted>,
}

/// The registrable domain of a target host (public suffix list); an
/// address, or a name the list does not know, stands as itself.
pub fn registrable_domain(host: &str) -> String {
    let host = host.trim().trim_end_matches('.').to_ascii_lowercase();
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.parse::<std::net::IpAddr>().is_ok() {
        return host.to_owned();
    }
    match psl::domain_str(host) {
        Some(domain) => domain.to_owned(),
        None => host.to_owned(),
    }
}

fn amount(field: &str, i: usize, v: u64) -> Result<i64> {
    i64::try_from(v).map_err(|_| Error::invalid(format!("records[{i}].{field}"), "too large"))
}

fn unsigned(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// Folded sums for one key.
#[derive(Default, Clone, Copy)]
struct Sums {
    up: i64,
    down: i64,
    connections: i64,
}

impl Sums {
    fn add(&mut self, up: i64, down: i64, connections: i64) {
        self.up = self.up.saturating_add(up);
        self.down = self.down.saturating_add(down);
        self.connections = self.connections.saturating_add(connections);
    }
}

/// A batch folded into its buckets, keyed by user name (resolved to account
/// ids inside the transaction).
#[derive(Default)]
struct Folded<'a> {
    hourly: HashMap<(&'a str, i64), Sums>,
    daily: HashMap<(&'a str, i64), Sums>,
    errors: HashMap<(&'a str, i64, &'a str), i64>,
    domains: HashMap<(&'a str, i64, String), i64>,
    exits: HashMap<(&'a str, i64), Sums>,
}

impl<'a> Folded<'a> {
    /// Checks each record and adds it to its buckets; a bad record fails the
    /// whole batch, naming its index and field.
    fn fold(records: &'a [UsageRecord]) -> Result<Folded<'a>> {
        let mut folded = Folded::default();
        for (i, r) in records.iter().enumerate() {
            folded.add(i, r)?;
        }
        Ok(folded)
    }

    fn add(&mut self, i: usize, r: &'a UsageRecord) -> Result<()> {
        let (up, down) = (
            amount("bytes_up", i, r.bytes_up)?,
            amount("bytes_down", i, r.bytes_down)?,
        );
        let connections = amount("connections", i, r.connections)?;
        for (field, key) in [("exit", &r.exit), ("error", &r.error)] {
            if key
                .as_ref()
                .is_some_and(|k| k.is_empty() || k.len() > MAX_KEY_LEN)
            {
                return Err(Error::invalid(
                    format!("records[{i}].{field}"),
                    format!("1 to {MAX_KEY_LEN} bytes"),
                ));
            }
        }
        let (hour, day) = (hour_start(r.at), day_start(r.at));
        let account = r.account.as_str();
        self.hourly
            .entry((account, hour))
            .or_default()
            .add(up, down, connections);
        self.daily
            .entry((account, day))
            .or_default()
            .add(up, down, connections);
        if let Some(code) = &r.error {
            *self.errors.entry((account, hour, code)).or_default() += connections;
        }
        if let Some(target) = r.target.as_deref().filter(|t| !t.is_empty()) {
            let domain = registrable_domain(target);
            if domain.len() <= 253 {
                *self.domains.entry((account, day, domain)).or_default() += up.saturating_add(down);
            }
        }
        if let Some(exit) = &r.exit {
            self.exits
                .entry((exit, day))
                .or_default()
                .add(up, down, connections);
        }
        Ok(())
    }
}

type Tx = sqlx::Transaction<'static, sqlx::Any>;

impl Store {
    /// Folds a batch into the history in one transaction. Records of user
    /// names no account has are left out and named in the outcome.
    pub async fn record_batch(&self, records: &[UsageRecord]) -> Result<BatchOutcome> {
        if records.len() > MAX_BATCH {
            return Err(Error::invalid(
                "records",
                format!("at most {MAX_BATCH} records a batch"),
            ));
        }
        let folded = Folded::fold(records)?;
        let mut tx = self.begin().await?;
        let (ids, unknown) = self.account_ids(&mut tx, records).await?;
        write_account_sums(&mut tx, &folded, &ids).await?;
        write_errors(&mut tx, &folded, &ids).await?;
        write_domains(&mut tx, &folded, &ids).await?;
        write_exits(&mut tx, &folded).await?;
        tx.commit().await?;
        let recorded = records
            .iter()
            .filter(|r| ids.contains_key(r.account.as_str()))
            .count();
        Ok(BatchOutcome {
            recorded,
            unknown_accounts: unknown,
        })
    }

    /// The account id of each user name in the batch, and the names no
    /// account has.
    async fn account_ids<'a>(
        &self,
        tx: &mut Tx,
        records: &'a [UsageRecord],
    ) -> Result<(HashMap<&'a str, i64>, Vec<String>)> {
        let mut ids: HashMap<&str, i64> = HashMap::new();
        let mut unknown = Vec::new();
        for r in records {
            if ids.contains_key(r.account.as_str()) || unknown.contains(&r.account) {
                continue;
            }
            match self.account_id(tx, &r.account).await? {
                Some((id, _)) => {
                    ids.insert(&r.account, id);
                }
                None => unknown.push(r.account.clone()),
            }
        }
        Ok((ids, unknown))
    }

    /// Removes history older than the retention, counted back from `now`
    /// (Unix seconds). Lifetime totals are never pruned.
    pub async fn prune(&self, now: i64) -> Result<PruneOutcome> {
        let r = self.retention;
        let hourly_before = now - i64::from(r.hourly_days) * DAY;
        let daily_before = now - i64::from(r.daily_days) * DAY;
        let domains_before = now - i64::from(r.domain_days) * DAY;
        let mut tx = self.begin().await?;
        let mut out = PruneOutcome::default();
        for (sql, before, kind) in [
            ("DELETE FROM usage_hourly WHERE hour < $1", hourly_before, 0),
            (
                "DELETE FROM usage_errors_hourly WHERE hour < $1",
                hourly_before,
                0,
            ),
            ("DELETE FROM usage_daily WHERE day < $1", daily_before, 1),
            (
                "DELETE FROM exit_usage_daily WHERE day < $1",
                daily_before,
                1,
            ),
            (
                "DELETE FROM domain_usage_daily WHERE day < $1",
                domains_before,
                2,
            ),
        ] {
            let removed = sqlx::query(sql)
                .bind(before)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            match kind {
                0 => out.hourly += removed,
                1 => out.daily += removed,
                _ => out.domains += removed,
            }
        }
        tx.commit().await?;
        Ok(out)
    }

    /// The ids whose usage counts for `who`: the account, and for a customer
    /// its sub-users too.
    async fn usage_ids(&self, who: AccountRef<'_>) -> Result<Vec<i64>> {
        let mut tx = self.begin().await?;
        let Some((id, customer_id)) = self.account_id(&mut tx, &who.full_name()).await? else {
            return Err(Error::not_found(format!("account {:?}", who.full_name())));
        };
        let mut ids = vec![id];
        if customer_id.is_none() {
            let rows = sqlx::query("SELECT id FROM accounts WHERE customer_id = $1")
                .bind(id)
                .fetch_all(&mut *tx)
                .await?;
            for row in rows {
                ids.push(row.try_get("id")?);
            }
        }
        tx.commit().await?;
        Ok(ids)
    }

    /// `who`'s history from `from` to `to` (Unix seconds, `to` exclusive) by
    /// `step`, every bucket present (zero where nothing moved). `from` is
    /// rounded down to a bucket; at most [`MAX_BUCKETS`] buckets.
    pub async fn usage(
        &self,
        who: AccountRef<'_>,
        from: i64,
        to: i64,
        step: Step,
    ) -> Result<Vec<UsageBucket>> {
        let width = step.seconds();
        let from = from.div_euclid(width) * width;
        let buckets = check_range(from, to, width)?;
        let ids = self.usage_ids(who).await?;
        let mut out: Vec<UsageBucket> = (0..buckets)
            .map(|i| UsageBucket {
                start: rfc3339(from + i * width),
                ..UsageBucket::default()
            })
            .collect();
        let (table, column) = match step {
            Step::Hour => ("usage_hourly", "hour"),
            Step::Day => ("usage_daily", "day"),
        };
        let list = id_list(&ids);
        let rows = sqlx::query(&format!(
            "SELECT {column} AS t, CAST(SUM(bytes_up) AS BIGINT) AS up, \
             CAST(SUM(bytes_down) AS BIGINT) AS down, CAST(SUM(connections) AS BIGINT) AS n \
             FROM {table} WHERE account_id IN ({list}) AND {column} >= $1 AND {column} < $2 \
             GROUP BY {column}"
        ))
        .bind(from)
        .bind(to)
        .fetch_all(&self.pool)
        .await?;
        for row in rows {
            let t: i64 = row.try_get("t")?;
            if let Some(b) = out.get_mut(((t - from) / width) as usize) {
                b.bytes_up = unsigned(row.try_get("up")?);
                b.bytes_down = unsigned(row.try_get("down")?);
                b.connections = unsigned(row.try_get("n")?);
            }
        }
        let rows = sqlx::query(&format!(
            "SELECT hour, code, count FROM usage_errors_hourly \
             WHERE account_id IN ({list}) AND hour >= $1 AND hour < $2"
        ))
        .bind(from)
        .bind(to)
        .fetch_all(&self.pool)
        .await?;
        for row in rows {
            let hour: i64 = row.try_get("hour")?;
            if let Some(b) = out.get_mut(((hour - from) / width) as usize) {
                *b.errors.entry(row.try_get("code")?).or_default() +=
                    unsigned(row.try_get("count")?);
            }
        }
        Ok(out)
    }

    /// `who`'s top [`TOP_DOMAINS`] registrable target domains by bytes on the
    /// UTC day starting at `day`.
    pub async fn domains(&self, who: AccountRef<'_>, day: i64) -> Result<Vec<DomainUsage>> {
        let ids = self.usage_ids(who).await?;
        let rows = sqlx::query(&format!(
            "SELECT domain, CAST(SUM(bytes) AS BIGINT) AS bytes FROM domain_usage_daily \
             WHERE account_id IN ({}) AND day = $1 GROUP BY domain \
             ORDER BY bytes DESC, domain LIMIT $2",
            id_list(&ids)
        ))
        .bind(day_start(day))
        .bind(TOP_DOMAINS)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(DomainUsage {
                    domain: row.try_get("domain")?,
                    bytes: unsigned(row.try_get("bytes")?),
                })
            })
            .collect()
    }

    /// An exit's days from `from` to `to` (Unix seconds, `to` exclusive),
    /// every day present. An exit never seen answers zeros: exits are not
    /// accounts, the store learns of them from usage.
    pub async fn exit_usage(&self, exit: &str, from: i64, to: i64) -> Result<Vec<ExitDay>> {
        let from = day_start(from);
        let days = check_range(from, to, DAY)?;
        let mut out: Vec<ExitDay> = (0..days)
            .map(|i| ExitDay {
                day: date(from + i * DAY),
                ..ExitDay::default()
            })
            .collect();
        let rows = sqlx::query(
            "SELECT day, bytes, streams FROM exit_usage_daily \
             WHERE exit_id = $1 AND day >= $2 AND day < $3",
        )
        .bind(exit)
        .bind(from)
        .bind(to)
        .fetch_all(&self.pool)
        .await?;
        for row in rows {
            let day: i64 = row.try_get("day")?;
            if let Some(d) = out.get_mut(((day - from) / DAY) as usize) {
                d.bytes = unsigned(row.try_get("bytes")?);
                d.streams = unsigned(row.try_get("streams")?);
            }
        }
        Ok(out)
    }

    /// Bytes `who` moved today, this month and over its life (UTC calendar
    /// periods containing `now`); a customer's include its sub-users'.
    pub async fn period_usage(&self, who: AccountRef<'_>, now: i64) -> Result<PeriodUsage> {
        let ids = self.usage_ids(who).await?;
        let list = id_list(&ids);
        let (today, month) = (day_start(now), month_start(now));
        let row = sqlx::query(&format!(
            "SELECT CAST(COALESCE(SUM(CASE WHEN day >= $1 THEN bytes_up + bytes_down ELSE 0 END), 0) AS BIGINT) AS today, \
             CAST(COALESCE(SUM(bytes_up + bytes_down), 0) AS BIGINT) AS month \
             FROM usage_daily WHERE account_id IN ({list}) AND day >= $2"
        ))
        .bind(today)
        .bind(month)
        .fetch_one(&self.pool)
        .await?;
        let lifetime: i64 = sqlx::query_scalar(&format!(
            "SELECT CAST(COALESCE(SUM(bytes_up + bytes_down), 0) AS BIGINT) FROM usage_lifetime \
             WHERE account_id IN ({list})"
        ))
        .fetch_one(&self.pool)
        .await?;
        Ok(PeriodUsage {
            today: unsigned(row.try_get("today")?),
            month: unsigned(row.try_get("month")?),
            lifetime: unsigned(lifetime),
        })
    }

    /// `who`'s period usage and the first of its quotas that ran out at
    /// `now`: its own daily, monthly, lifetime; then, for a sub-user, its
    /// customer's (counting the customer's whole usage).
    pub async fn quota_status(&self, who: AccountRef<'_>, now: i64) -> Result<QuotaStatus> {
        let account = self.account(who).await?;
        let usage = self.period_usage(who, now).await?;
        let mut exhausted = first_exhausted(&account.name, &account.limits, usage, now);
        if exhausted.is_none() {
            if let AccountRef::SubUser { customer, .. } = who {
                let parent = self.account(AccountRef::Customer(customer)).await?;
                let parent_usage = self
                    .period_usage(AccountRef::Customer(customer), now)
                    .await?;
                exhausted = first_exhausted(customer, &parent.limits, parent_usage, now);
            }
        }
        Ok(QuotaStatus { usage, exhausted })
    }
}

/// Upserts the hourly and daily account buckets and the lifetime totals.
async fn write_account_sums(
    tx: &mut Tx,
    folded: &Folded<'_>,
    ids: &HashMap<&str, i64>,
) -> Result<()> {
    for ((account, hour), s) in &folded.hourly {
        let Some(id) = ids.get(account) else { continue };
        sqlx::query(
            "INSERT INTO usage_hourly (account_id, hour, bytes_up, bytes_down, connections) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (account_id, hour) DO UPDATE SET \
             bytes_up = usage_hourly.bytes_up + excluded.bytes_up, \
             bytes_down = usage_hourly.bytes_down + excluded.bytes_down, \
             connections = usage_hourly.connections + excluded.connections",
        )
        .bind(id)
        .bind(hour)
        .bind(s.up)
        .bind(s.down)
        .bind(s.connections)
        .execute(&mut **tx)
        .await?;
    }
    let mut lifetime: HashMap<i64, Sums> = HashMap::new();
    for ((account, day), s) in &folded.daily {
        let Some(id) = ids.get(account) else { continue };
        lifetime.entry(*id).or_default().add(s.up, s.down, 0);
        sqlx::query(
            "INSERT INTO usage_daily (account_id, day, bytes_up, bytes_down, connections) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (account_id, day) DO UPDATE SET \
             bytes_up = usage_daily.bytes_up + excluded.bytes_up, \
             bytes_down = usage_daily.bytes_down + excluded.bytes_down, \
             connections = usage_daily.connections + excluded.connections",
        )
        .bind(id)
        .bind(day)
        .bind(s.up)
        .bind(s.down)
        .bind(s.connections)
        .execute(&mut **tx)
        .await?;
    }
    for (id, s) in &lifetime {
        sqlx::query(
            "INSERT INTO usage_lifetime (account_id, bytes_up, bytes_down) VALUES ($1, $2, $3) \
             ON CONFLICT (account_id) DO UPDATE SET \
             bytes_up = usage_lifetime.bytes_up + excluded.bytes_up, \
             bytes_down = usage_lifetime.bytes_down + excluded.bytes_down",
        )
        .bind(id)
        .bind(s.up)
        .bind(s.down)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

/// Upserts the failed connections by account, hour and error code.
async fn write_errors(tx: &mut Tx, folded: &Folded<'_>, ids: &HashMap<&str, i64>) -> Result<()> {
    for ((account, hour, code), count) in &folded.errors {
        let Some(id) = ids.get(account) else { continue };
        sqlx::query(
            "INSERT INTO usage_errors_hourly (account_id, hour, code, count) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (account_id, hour, code) DO UPDATE SET \
             count = usage_errors_hourly.count + excluded.count",
        )
        .bind(id)
        .bind(hour)
        .bind(*code)
        .bind(count)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

/// Upserts the domains' daily bytes, then keeps only the largest
/// [`KEPT_DOMAINS`] of each account and day touched.
async fn write_domains(tx: &mut Tx, folded: &Folded<'_>, ids: &HashMap<&str, i64>) -> Result<()> {
    let mut trimmed: Vec<(i64, i64)> = Vec::new();
    for ((account, day, domain), bytes) in &folded.domains {
        let Some(id) = ids.get(account) else { continue };
        sqlx::query(
            "INSERT INTO domain_usage_daily (account_id, day, domain, bytes) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (account_id, day, domain) DO UPDATE SET \
             bytes = domain_usage_daily.bytes + excluded.bytes",
        )
        .bind(id)
        .bind(day)
        .bind(domain)
        .bind(bytes)
        .execute(&mut **tx)
        .await?;
        if !trimmed.contains(&(*id, *day)) {
            trimmed.push((*id, *day));
        }
    }
    for (id, day) in trimmed {
        sqlx::query(
            "DELETE FROM domain_usage_daily WHERE account_id = $1 AND day = $2 AND domain NOT IN \
             (SELECT domain FROM domain_usage_daily WHERE account_id = $1 AND day = $2 \
              ORDER BY bytes DESC, domain LIMIT $3)",
        )
        .bind(id)
        .bind(day)
        .bind(KEPT_DOMAINS)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

/// Upserts the exits' daily bytes and streams (for payouts).
async fn write_exits(tx: &mut Tx, folded: &Folded<'_>) -> Result<()> {
    for ((exit, day), s) in &folded.exits {
        sqlx::query(
            "INSERT INTO exit_usage_daily (exit_id, day, bytes, streams) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (exit_id, day) DO UPDATE SET \
             bytes = exit_usage_daily.bytes + excluded.bytes, \
             streams = exit_usage_daily.streams + excluded.streams",
        )
        .bind(*exit)
        .bind(day)
        .bind(s.up.saturating_add(s.down))
        .bind(s.connections)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

/// An account's quota periods at `now`: for `daily`, `monthly` and
/// `lifetime`, the quota (if any), the bytes `usage` counted in it, and when
/// it resets (Unix seconds; `None` for lifetime).
pub fn quota_periods(
    limits: &crate::model::Limits,
    usage: PeriodUsage,
    now: i64,
) -> [(&'static str, Option<u64>, u64, Option<i64>); 3] {
    [
        (
            "daily",
            limits.quota_daily,
            usage.today,
            Some(day_start(now) + DAY),
        ),
        (
            "monthly",
            limits.quota_monthly,
            usage.month,
            Some(next_month_start(now)),
        ),
        ("lifetime", limits.quota_lifetime, usage.lifetime, None),
    ]
}

/// The first of `limits`' quotas that `usage` reached.
fn first_exhausted(
    account: &str,
    limits: &crate::model::Limits,
    usage: PeriodUsage,
    now: i64,
) -> Option<Exhausted> {
    quota_periods(limits, usage, now)
        .into_iter()
        .find_map(|(period, quota, used, resets)| {
            let quota = quota?;
            (used >= quota).then(|| Exhausted {
                account: account.to_owned(),
                period: period.into(),
                quota,
                used,
                resets_at: resets.map(rfc3339),
                resets_at_unix: resets,
            })
        })
}

/// The number of `width` buckets from `from` to `to`, checked.
fn check_range(from: i64, to: i64, width: i64) -> Result<i64> {
    if to <= from {
        return Err(Error::invalid("to", "must be after from"));
    }
    let buckets = (to - from + width - 1) / width;
    if buckets > MAX_BUCKETS {
        return Err(Error::invalid(
            "to",
            format!("at most {MAX_BUCKETS} buckets a query; narrow the range or use step=day"),
        ));
    }
    Ok(buckets)
}

/// Account ids as an SQL list. They are the store's own integers, never
/// client text, so writing them into the query is safe.
fn id_list(ids: &[i64]) -> String {
    ids.iter().map(i64::to_string).collect::<Vec<_>>().join(",")
}

#[cfg(test)]
mod tests {
    use super::registrable_domain;

    #[test]
    fn registrable_domains() {
        assert_eq!(registrable_domain("www.Example.co.uk."), "example.co.uk");
        assert_eq!(registrable_domain("a.b.example.com"), "example.com");
        assert_eq!(registrable_domain("203.0.113.7"), "203.0.113.7");
        assert_eq!(registrable_domain("[2001:db8::1]"), "2001:db8::1");
    }
}
