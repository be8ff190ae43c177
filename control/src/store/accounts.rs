//! Customers and their sub-users: create, show, list, change, disable,
//! delete, rotate a password; and the snapshot of every account a gateway
//! loads into its in-memory view. Every change is one transaction that also
//! bumps the revision.

use super::{api_amount, bump_revision, db_amount, list, list_text, unique_violation, Store};
use crate::error::{Error, Result};
use crate::model::{
    check_name, check_password, check_password_hash, sub_user_name, Account, AccountPatch, Created,
    Limits, NewAccount, NewPassword, Page,
};
use crate::period::{now, rfc3339};
use crate::secret::{generate_password, hash_password_blocking};
use ipnet::IpNet;
use sqlx::any::AnyRow;
use sqlx::{Any, Row, Transaction};

/// Largest page of a list.
pub const MAX_PAGE: u32 = 1000;
/// Most sub-users one customer may have.
pub const MAX_SUB_USERS: i64 = 10_000;

/// Which account a call is about: a customer by name, or one of its sub-users.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccountRef<'a> {
    /// A customer.
    Customer(&'a str),
    /// A sub-user: its own name and its customer's.
    SubUser {
        /// The customer.
        customer: &'a str,
        /// The sub-user's own name (without `.customer`).
        sub: &'a str,
    },
}

impl AccountRef<'_> {
    /// The user name clients send.
    pub fn full_name(&self) -> String {
        match self {
            AccountRef::Customer(name) => (*name).to_owned(),
            AccountRef::SubUser { customer, sub } => sub_user_name(sub, customer),
        }
    }

    fn describe(&self) -> String {
        match self {
            AccountRef::Customer(name) => format!("customer {name:?}"),
            AccountRef::SubUser { .. } => format!("sub-user {:?}", self.full_name()),
        }
    }
}

/// An account as the gateway's in-memory view needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountEntry {
    /// The user name clients send (`alice`, `ops.alice`).
    pub name: String,
    /// A sub-user's customer.
    pub customer: Option<String>,
    /// Argon2id PHC string.
    pub password_hash: String,
    /// Whether it may connect.
    pub enabled: bool,
    /// Its limits (a sub-user's customer's apply as well).
    pub limits: Limits,
    /// `limits.allow_ips`, parsed.
    pub networks: Vec<IpNet>,
}

/// Every account at one revision: what a gateway swaps into its view.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// The revision it was read at ([`Store::revision`]).
    pub revision: i64,
    /// Customers and sub-users, by name.
    pub accounts: Vec<AccountEntry>,
    /// Banned exits, fleet-wide.
    pub bans: Vec<super::ExitBan>,
}

/// A stored account row.
struct Stored {
    id: i64,
    customer: Option<String>,
    password_hash: String,
    account: Account,
}

const SELECT: &str = "SELECT a.id, a.name, c.name AS customer_name, a.password_hash, a.enabled, \
     a.countries, a.max_connections, a.requests_per_second, a.quota_daily, a.quota_monthly, \
     a.quota_lifetime, a.allow_ips, a.blocked_domains, a.created_at, a.updated_at \
     FROM accounts a LEFT JOIN accounts c ON c.id = a.customer_id";

fn stored(row: &AnyRow) -> Result<Stored> {
    let customer: Option<String> = row.try_get("customer_name")?;
    let limits = Limits {
        countries: list(row, "countries")?,
        max_connections: api_amount(row.try_get("max_connections")?),
        requests_per_second: api_amount(row.try_get("requests_per_second")?),
        quota_daily: api_amount(row.try_get("quota_daily")?),
        quota_monthly: api_amount(row.try_get("quota_monthly")?),
        quota_lifetime: api_amount(row.try_get("quota_lifetime")?),
        allow_ips: list(row, "allow_ips")?,
        blocked_domains: list(row, "blocked_domains")?,
    };
    Ok(Stored {
        id: row.try_get("id")?,
        customer: customer.clone(),
        password_hash: row.try_get("password_hash")?,
        account: Account {
            name: row.try_get("name")?,
            customer,
            enabled: row.try_get::<i64, _>("enabled")? != 0,
            limits,
            created_at: rfc3339(row.try_get("created_at")?),
            updated_at: rfc3339(row.try_get("updated_at")?),
        },
    })
}

impl Store {
    /// Loads one account inside `tx`, locking its row where rows lock.
    async fn load(
        &self,
        tx: &mut Transaction<'static, Any>,
        who: AccountRef<'_>,
    ) -> Result<Stored> {
        let scope = match who {
            AccountRef::Customer(_) => "a.customer_id IS NULL",
            AccountRef::SubUser { .. } => "a.customer_id IS NOT NULL",
        };
        // `FOR UPDATE` may not lock the nullable side of an outer join: lock `a` only.
        let lock = match self.for_update() {
            "" => "",
            _ => " FOR UPDATE OF a",
        };
        let row = sqlx::query(&format!("{SELECT} WHERE a.name = $1 AND {scope}{lock}"))
            .bind(who.full_name())
            .fetch_optional(&mut **tx)
            .await?
            .ok_or_else(|| Error::not_found(who.describe()))?;
        stored(&row)
    }

    /// Creates a customer (`customer` `None`) or a sub-user of `customer`.
    /// Answers the generated password once when the client chose none.
    pub async fn create(&self, customer: Option<&str>, new: NewAccount) -> Result<Created> {
        check_name("name", &new.name)?;
        if let Some(password) = &new.password {
            check_password(password)?;
        }
        if let Some(hash) = &new.password_hash {
            if new.password.is_some() {
                return Err(Error::invalid(
                    "password_hash",
                    "give a password or a password hash, not both",
                ));
            }
            check_password_hash(hash)?;
        }
        let limits = new.limits.checked()?;
        let (hash, generated) = match new.password_hash {
            Some(hash) => (hash, None),
            None => {
                let generated = new.password.is_none().then(generate_password);
                let password = new
                    .password
                    .or_else(|| generated.clone())
                    .unwrap_or_default();
                (hash_password_blocking(password).await?, generated)
            }
        };
        let mut tx = self.begin().await?;
        let (name, customer_id) = match customer {
            None => (new.name.clone(), None),
            Some(customer) => {
                let parent = self.load(&mut tx, AccountRef::Customer(customer)).await?;
                limits.within(&parent.account.limits)?;
                let count: i64 =
                    sqlx::query_scalar("SELECT COUNT(*) FROM accounts WHERE customer_id = $1")
                        .bind(parent.id)
                        .fetch_one(&mut *tx)
                        .await?;
                if count >= MAX_SUB_USERS {
                    return Err(Error::Conflict {
                        field: None,
                        message: format!(
                            "customer {customer:?} already has {MAX_SUB_USERS} sub-users"
                        ),
                    });
                }
                (sub_user_name(&new.name, customer), Some(parent.id))
            }
        };
        let at = now();
        let inserted = sqlx::query(
            "INSERT INTO accounts (name, customer_id, password_hash, enabled, countries, \
             max_connections, requests_per_second, quota_daily, quota_monthly, quota_lifetime, \
             allow_ips, blocked_domains, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $13)",
        )
        .bind(&name)
        .bind(customer_id)
        .bind(&hash)
        .bind(i64::from(new.enabled.unwrap_or(true)))
        .bind(list_text(&limits.countries))
        .bind(db_amount(limits.max_connections))
        .bind(db_amount(limits.requests_per_second))
        .bind(db_amount(limits.quota_daily))
        .bind(db_amount(limits.quota_monthly))
        .bind(db_amount(limits.quota_lifetime))
        .bind(list_text(&limits.allow_ips))
        .bind(list_text(&limits.blocked_domains))
        .bind(at)
        .execute(&mut *tx)
        .await;
        match inserted {
            Err(e) if unique_violation(&e) => {
                return Err(Error::Conflict {
                    field: Some("name".into()),
                    message: format!("{name:?} is taken"),
                })
            }
            other => other?,
        };
        bump_revision(&mut tx).await?;
        let who = match customer {
            None => AccountRef::Customer(&new.name),
            Some(customer) => AccountRef::SubUser {
                customer,
                sub: &new.name,
            },
        };
        let account = self.load(&mut tx, who).await?.account;
        self.commit_change(tx).await?;
        Ok(Created {
            account,
            password: generated,
        })
    }

    /// One account.
    pub async fn account(&self, who: AccountRef<'_>) -> Result<Account> {
        let mut tx = self.begin().await?;
        let stored = self.load(&mut tx, who).await?;
        tx.commit().await?;
        Ok(stored.account)
    }

    /// Customers (`customer` `None`) or a customer's sub-users, in name order,
    /// after the name `after`, at most `limit` ([`super::page_limit`]).
    pub async fn list(
        &self,
        customer: Option<&str>,
        after: Option<&str>,
        limit: Option<u32>,
    ) -> Result<Page<Account>> {
        let limit = super::page_limit(limit)?;
        let mut tx = self.begin().await?;
        let rows = match customer {
            None => {
                sqlx::query(&format!(
                    "{SELECT} WHERE a.customer_id IS NULL AND a.name > $1 ORDER BY a.name LIMIT $2"
                ))
                .bind(after.unwrap_or(""))
                .bind(limit + 1)
                .fetch_all(&mut *tx)
                .await?
            }
            Some(customer) => {
                let parent = self.load(&mut tx, AccountRef::Customer(customer)).await?;
                // `after` is a sub-user's own name; rows hold full names.
                let after = after.map(|sub| sub_user_name(sub, customer));
                sqlx::query(&format!(
                    "{SELECT} WHERE a.customer_id = $1 AND a.name > $2 ORDER BY a.name LIMIT $3"
                ))
                .bind(parent.id)
                .bind(after.unwrap_or_default())
                .bind(limit + 1)
                .fetch_all(&mut *tx)
                .await?
            }
        };
        tx.commit().await?;
        let mut items = rows
            .iter()
            .map(|row| stored(row).map(|s| s.account))
            .collect::<Result<Vec<_>>>()?;
        let next = if items.len() as i64 > limit {
            items.truncate(limit as usize);
            items.last().map(|a| match customer {
                Some(customer) => a
                    .name
                    .strip_suffix(&format!(".{customer}"))
                    .unwrap_or(&a.name)
                    .to_owned(),
                None => a.name.clone(),
            })
        } else {
            None
        };
        Ok(Page { items, next })
    }

    /// Changes an account: all of the patch or none of it. A sub-user's
    /// limits stay within its customer's; a customer's cannot drop below a
    /// sub-user's (the error names the sub-user).
    pub async fn patch(&self, who: AccountRef<'_>, patch: AccountPatch) -> Result<Account> {
        let mut tx = self.begin().await?;
        if let AccountRef::SubUser { customer, .. } = who {
            // Lock the customer first, as a change to the customer does.
            self.load(&mut tx, AccountRef::Customer(customer)).await?;
        }
        let current = self.load(&mut tx, who).await?;
        let limits = patch.limits.apply(current.account.limits).checked()?;
        match who {
            AccountRef::SubUser { customer, .. } => {
                let parent = self.load(&mut tx, AccountRef::Customer(customer)).await?;
                limits.within(&parent.account.limits)?;
            }
            AccountRef::Customer(_) => {
                let children = sqlx::query(&format!("{SELECT} WHERE a.customer_id = $1"))
                    .bind(current.id)
                    .fetch_all(&mut *tx)
                    .await?;
                for row in &children {
                    let child = stored(row)?;
                    child.account.limits.within(&limits).map_err(|e| match e {
                        Error::Invalid { field, message } => Error::Invalid {
                            field,
                            message: format!(
                                "sub-user {:?} would not fit: {message}; change the sub-user first",
                                child.account.name
                            ),
                        },
                        other => other,
                    })?;
                }
            }
        }
        let enabled = patch.enabled.unwrap_or(current.account.enabled);
        sqlx::query(
            "UPDATE accounts SET enabled = $1, countries = $2, max_connections = $3, \
             requests_per_second = $4, quota_daily = $5, quota_monthly = $6, quota_lifetime = $7, \
             allow_ips = $8, blocked_domains = $9, updated_at = $10 WHERE id = $11",
        )
        .bind(i64::from(enabled))
        .bind(list_text(&limits.countries))
        .bind(db_amount(limits.max_connections))
        .bind(db_amount(limits.requests_per_second))
        .bind(db_amount(limits.quota_daily))
        .bind(db_amount(limits.quota_monthly))
        .bind(db_amount(limits.quota_lifetime))
        .bind(list_text(&limits.allow_ips))
        .bind(list_text(&limits.blocked_domains))
        .bind(now())
        .bind(current.id)
        .execute(&mut *tx)
        .await?;
        bump_revision(&mut tx).await?;
        let account = self.load(&mut tx, who).await?.account;
        self.commit_change(tx).await?;
        Ok(account)
    }

    /// Enables or disables an account.
    pub async fn set_enabled(&self, who: AccountRef<'_>, enabled: bool) -> Result<Account> {
        self.patch(
            who,
            AccountPatch {
                enabled: Some(enabled),
                ..AccountPatch::default()
            },
        )
        .await
    }

    /// Deletes an account; a customer's sub-users and all their history go with it.
    pub async fn delete(&self, who: AccountRef<'_>) -> Result<()> {
        let mut tx = self.begin().await?;
        let current = self.load(&mut tx, who).await?;
        sqlx::query("DELETE FROM accounts WHERE id = $1")
            .bind(current.id)
            .execute(&mut *tx)
            .await?;
        bump_revision(&mut tx).await?;
        self.commit_change(tx).await?;
        Ok(())
    }

    /// Gives an account a generated password, answered this once.
    pub async fn rotate_password(&self, who: AccountRef<'_>) -> Result<NewPassword> {
        let password = generate_password();
        let hash = hash_password_blocking(password.clone()).await?;
        let mut tx = self.begin().await?;
        let current = self.load(&mut tx, who).await?;
        sqlx::query("UPDATE accounts SET password_hash = $1, updated_at = $2 WHERE id = $3")
            .bind(hash)
            .bind(now())
            .bind(current.id)
            .execute(&mut *tx)
            .await?;
        bump_revision(&mut tx).await?;
        self.commit_change(tx).await?;
        Ok(NewPassword {
            name: current.account.name,
            password,
        })
    }

    /// Every account with its password hash, at one revision: what a gateway
    /// swaps into its in-memory view (it polls [`Store::revision`] and calls
    /// this when it moved).
    pub async fn snapshot(&self) -> Result<Snapshot> {
        let mut tx = self.begin().await?;
        let revision: i64 = sqlx::query_scalar("SELECT value FROM revision WHERE id = 1")
            .fetch_one(&mut *tx)
            .await?;
        let rows = sqlx::query(&format!("{SELECT} ORDER BY a.name"))
            .fetch_all(&mut *tx)
            .await?;
        let bans = super::bans::exit_bans_in(&mut tx).await?;
        tx.commit().await?;
        let accounts = rows
            .iter()
            .map(|row| {
                let s = stored(row)?;
                Ok(AccountEntry {
                    name: s.account.name,
                    customer: s.customer,
                    password_hash: s.password_hash,
                    enabled: s.account.enabled,
                    networks: s.account.limits.networks(),
                    limits: s.account.limits,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Snapshot {
            revision,
            accounts,
            bans,
        })
    }

    /// The account id of a user name (a customer or `sub.customer`).
    pub(super) async fn account_id(
        &self,
        tx: &mut Transaction<'static, Any>,
        name: &str,
    ) -> Result<Option<(i64, Option<i64>)>> {
        let row = sqlx::query("SELECT id, customer_id FROM accounts WHERE name = $1")
            .bind(name)
            .fetch_optional(&mut **tx)
            .await?;
        row.map(|row| Ok((row.try_get("id")?, row.try_get("customer_id")?)))
            .transpose()
    }
}
