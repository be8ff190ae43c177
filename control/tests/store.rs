//! The store's behaviour, the same suite against SQLite (a file in a
//! temporary directory) and a real PostgreSQL (a throwaway cluster): accounts
//! and their rules, all-or-nothing changes, sub-users within their customer,
//! tokens, usage history and its retention, quota periods, the snapshot and
//! revision a gateway reads, the change signal and PostgreSQL's notices that
//! push a change to every gateway, and a schema newer than the build.

mod common;

use common::{Fresh, TEST_BOUND};
use exitpool_control::model::{AccountPatch, Limits, LimitsPatch, NewAccount, NewToken};
use exitpool_control::period::{parse_time, DAY, HOUR};
use exitpool_control::secret::verify_password;
use exitpool_control::store::{Step, UsageRecord};
use exitpool_control::{AccountRef, Error, Retention, Store};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suite_on_sqlite() {
    let mut fresh = Fresh::sqlite();
    tokio::time::timeout(TEST_BOUND, suite(&mut fresh))
        .await
        .expect("the suite finishes in time");
    fresh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suite_on_postgres() {
    let mut fresh = Fresh::postgres().await;
    tokio::time::timeout(TEST_BOUND, suite(&mut fresh))
        .await
        .expect("the suite finishes in time");
    fresh.stop().await;
}

/// The default location is a file in the state directory; a location that is
/// neither a path nor a known URL is refused, and a password in a URL never
/// reaches the error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locations() {
    tokio::time::timeout(TEST_BOUND, async {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_state_dir(dir.path()).await.unwrap();
        store.create(None, new("alice")).await.unwrap();
        // WAL mode: the log sits beside the file while the store is open.
        let file = dir.path().join(exitpool_control::store::SQLITE_FILE);
        assert!(file.with_extension("sqlite3-wal").exists());
        store.close().await;
        assert!(file.exists());
        let again = Store::open_state_dir(dir.path()).await.unwrap();
        assert_eq!(again.account(C("alice")).await.unwrap().name, "alice");
        again.close().await;

        let err = Store::open("mysql://u:hunter2@127.0.0.1/x", Retention::default())
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Location { .. }), "{err}");
        assert!(!err.to_string().contains("hunter2"), "{err}");
        // Nothing listens on port 1: the connection is refused, the password unsaid.
        let err = Store::open("postgres://u:hunter2@127.0.0.1:1/x", Retention::default())
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Location { .. }), "{err}");
        assert!(!err.to_string().contains("hunter2"), "{err}");
    })
    .await
    .expect("in time");
}

async fn suite(fresh: &mut Fresh) {
    customers(fresh.store().await).await;
    sub_users(fresh.store().await).await;
    tokens(fresh.store().await).await;
    usage(fresh.store().await).await;
    top_domains(fresh.store().await).await;
    retention(fresh).await;
    snapshot_and_revision(fresh.store().await).await;
    exit_bans(fresh.store().await).await;
    change_signals(fresh).await;
    newer_schema_refused(fresh).await;
}

/// A committed change marks the store's own signal at once (a gateway's own
/// API writes); on PostgreSQL another store on the same database (another
/// gateway) hears of it through `NOTIFY`. A refused change commits nothing
/// and marks nothing.
async fn change_signals(fresh: &mut Fresh) {
    let bound = std::time::Duration::from_secs(10);
    let location = fresh.location().await;
    let one = Store::open(&location, Retention::default()).await.unwrap();
    let two = Store::open(&location, Retention::default()).await.unwrap();
    let mut mine = one.changes();
    let mut theirs = two.changes();
    let mut notices = two.change_notices().await.unwrap();
    assert_eq!(
        notices.is_some(),
        one.backend() == exitpool_control::Backend::Postgres
    );
    one.create(None, new("carol")).await.unwrap();
    tokio::time::timeout(bound, mine.changed())
        .await
        .expect("the store's own signal")
        .unwrap();
    if let Some(notices) = notices.as_mut() {
        let started = std::time::Instant::now();
        let heard = tokio::time::timeout(bound, notices.next())
            .await
            .expect("the other store hears the change")
            .unwrap();
        assert!(heard, "a notice, not a lost connection");
        eprintln!(
            "NOTIFY reached the other store {:?} after the commit's answer",
            started.elapsed()
        );
    }
    // The other store's own signal is for its own writes only.
    assert!(!theirs.has_changed().unwrap());
    one.create(None, new("carol")).await.unwrap_err();
    assert!(
        !mine.has_changed().unwrap(),
        "a refused change marked the signal"
    );
    two.ban_exit("e7", "signal test", 1).await.unwrap();
    tokio::time::timeout(bound, theirs.changed())
        .await
        .expect("a ban marks the signal too")
        .unwrap();
    one.close().await;
    two.close().await;
}

/// A ban and an unban move the revision and travel in the snapshot; a
/// second ban keeps the first one's reason; bad input names its field.
async fn exit_bans(store: Store) {
    let before = store.revision().await.unwrap();
    assert!(store.ban_exit("e1", "abuse report 17", 100).await.unwrap());
    assert!(!store.ban_exit("e1", "again", 200).await.unwrap());
    let moved = store.revision().await.unwrap();
    assert!(moved > before, "{moved} after {before}");
    let snapshot = store.snapshot().await.unwrap();
    assert_eq!(snapshot.bans.len(), 1);
    assert_eq!(
        (snapshot.bans[0].exit_id.as_str(), snapshot.bans[0].since),
        ("e1", 100)
    );
    assert_eq!(snapshot.bans[0].reason, "abuse report 17");
    let long = "x".repeat(exitpool_control::store::MAX_BAN_REASON + 1);
    let error = store.ban_exit("e2", &long, 1).await.unwrap_err();
    assert_eq!(field(error).1.as_deref(), Some("reason"));
    assert!(store.unban_exit("e1").await.unwrap());
    assert!(!store.unban_exit("e1").await.unwrap());
    assert!(store.revision().await.unwrap() > moved);
    assert!(store.exit_bans().await.unwrap().is_empty());
}

fn new(name: &str) -> NewAccount {
    NewAccount {
        name: name.into(),
        ..NewAccount::default()
    }
}

fn field(e: Error) -> (String, Option<String>) {
    (e.kind().to_owned(), e.field().map(str::to_owned))
}

#[allow(non_snake_case)]
fn C(name: &str) -> AccountRef<'_> {
    AccountRef::Customer(name)
}

async fn customers(store: Store) {
    let created = store.create(None, new("alice")).await.unwrap();
    let password = created.password.expect("a generated password is answered");
    assert!(password.len() >= 24);
    assert_eq!(created.account.name, "alice");
    assert!(created.account.enabled);

    let snapshot = store.snapshot().await.unwrap();
    let entry = &snapshot.accounts[0];
    assert!(entry.password_hash.starts_with("$argon2id$"));
    assert!(verify_password(&password, &entry.password_hash));
    assert!(!snapshot
        .accounts
        .iter()
        .any(|a| a.password_hash.contains(&password)));

    let chosen = NewAccount {
        password: Some("s3cret".into()),
        ..new("bob")
    };
    assert!(store.create(None, chosen).await.unwrap().password.is_none());

    // Names follow the credential grammar; a taken name is a conflict.
    assert_eq!(
        field(store.create(None, new("alice")).await.unwrap_err()),
        ("conflict".into(), Some("name".into()))
    );
    for bad in ["a-b", "a.b", "", "ü"] {
        assert_eq!(
            field(store.create(None, new(bad)).await.unwrap_err()),
            ("invalid".into(), Some("name".into())),
            "{bad:?}"
        );
    }
    let bad_password = NewAccount {
        password: Some("has-dash".into()),
        ..new("carol")
    };
    assert_eq!(
        field(store.create(None, bad_password).await.unwrap_err())
            .1
            .as_deref(),
        Some("password")
    );
    let bad_net = NewAccount {
        limits: Limits {
            allow_ips: vec!["10.0.0.0/8".into(), "10.0.0.0/99".into()],
            ..Limits::default()
        },
        ..new("carol")
    };
    assert_eq!(
        field(store.create(None, bad_net).await.unwrap_err())
            .1
            .as_deref(),
        Some("limits.allow_ips[1]")
    );
    assert!(matches!(
        store.account(C("carol")).await.unwrap_err(),
        Error::NotFound { .. }
    ));

    // Paging by name.
    for name in ["d1", "d2", "d3"] {
        store.create(None, new(name)).await.unwrap();
    }
    let first = store.list(None, None, Some(2)).await.unwrap();
    let names: Vec<_> = first.items.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(names, ["alice", "bob"]);
    assert_eq!(first.next.as_deref(), Some("bob"));
    let second = store.list(None, Some("bob"), Some(2)).await.unwrap();
    assert_eq!(second.items.len(), 2);
    let third = store
        .list(None, second.next.as_deref(), Some(2))
        .await
        .unwrap();
    assert_eq!(third.items.len(), 1);
    assert_eq!(third.next, None);
    assert_eq!(
        field(store.list(None, None, Some(0)).await.unwrap_err())
            .1
            .as_deref(),
        Some("limit")
    );

    // A patch changes only what it names; null removes.
    let patched = store
        .patch(
            C("alice"),
            AccountPatch {
                limits: LimitsPatch {
                    quota_daily: Some(Some(1000)),
                    countries: Some(vec!["de".into(), "us".into()]),
                    ..LimitsPatch::default()
                },
                ..AccountPatch::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(patched.limits.quota_daily, Some(1000));
    assert_eq!(patched.limits.countries, ["DE", "US"]);
    let patch: AccountPatch =
        serde_json::from_str(r#"{"limits":{"quota_daily":null,"max_connections":7}}"#).unwrap();
    let patched = store.patch(C("alice"), patch).await.unwrap();
    assert_eq!(patched.limits.quota_daily, None);
    assert_eq!(patched.limits.max_connections, Some(7));
    assert_eq!(patched.limits.countries, ["DE", "US"]);

    // All or nothing: a patch with one bad field changes nothing.
    let patch: AccountPatch = serde_json::from_str(
        r#"{"enabled":false,"limits":{"max_connections":9,"quota_monthly":0}}"#,
    )
    .unwrap();
    assert_eq!(
        field(store.patch(C("alice"), patch).await.unwrap_err())
            .1
            .as_deref(),
        Some("limits.quota_monthly")
    );
    let unchanged = store.account(C("alice")).await.unwrap();
    assert!(unchanged.enabled);
    assert_eq!(unchanged.limits.max_connections, Some(7));

    assert!(!store.set_enabled(C("alice"), false).await.unwrap().enabled);
    assert!(store.set_enabled(C("alice"), true).await.unwrap().enabled);

    // A rotated password replaces the old one.
    let rotated = store.rotate_password(C("alice")).await.unwrap();
    assert_eq!(rotated.name, "alice");
    let hash = store
        .snapshot()
        .await
        .unwrap()
        .accounts
        .into_iter()
        .find(|a| a.name == "alice")
        .unwrap()
        .password_hash;
    assert!(verify_password(&rotated.password, &hash));
    assert!(!verify_password(&password, &hash));

    store.delete(C("bob")).await.unwrap();
    assert!(matches!(
        store.account(C("bob")).await.unwrap_err(),
        Error::NotFound { .. }
    ));
    assert!(matches!(
        store.delete(C("bob")).await.unwrap_err(),
        Error::NotFound { .. }
    ));
    store.close().await;
}

fn limits(daily: u64, connections: u64) -> Limits {
    Limits {
        quota_daily: Some(daily),
        max_connections: Some(connections),
        countries: vec!["DE".into(), "US".into()],
        ..Limits::default()
    }
}

async fn sub_users(store: Store) {
    let parent = NewAccount {
        limits: limits(1000, 10),
        ..new("acme")
    };
    store.create(None, parent).await.unwrap();
    let ops = AccountRef::SubUser {
        customer: "acme",
        sub: "ops",
    };
    let created = store
        .create(
            Some("acme"),
            NewAccount {
                limits: Limits {
                    countries: vec!["DE".into()],
                    ..limits(500, 5)
                },
                ..new("ops")
            },
        )
        .await
        .unwrap();
    assert_eq!(created.account.name, "ops.acme");
    assert_eq!(created.account.customer.as_deref(), Some("acme"));
    assert!(created.password.is_some());
    assert_eq!(store.account(ops).await.unwrap().name, "ops.acme");
    // A sub-user is not a customer.
    assert!(store.account(C("ops.acme")).await.is_err());

    // Above the customer's limits: 422 naming the field.
    let over = NewAccount {
        limits: limits(2000, 5),
        ..new("big")
    };
    assert_eq!(
        field(store.create(Some("acme"), over).await.unwrap_err()),
        ("invalid".into(), Some("limits.quota_daily".into()))
    );
    let over = NewAccount {
        limits: limits(100, 11),
        ..new("big")
    };
    assert_eq!(
        field(store.create(Some("acme"), over).await.unwrap_err())
            .1
            .as_deref(),
        Some("limits.max_connections")
    );
    let elsewhere = NewAccount {
        limits: Limits {
            countries: vec!["JP".into()],
            ..limits(100, 1)
        },
        ..new("big")
    };
    assert_eq!(
        field(store.create(Some("acme"), elsewhere).await.unwrap_err())
            .1
            .as_deref(),
        Some("limits.countries")
    );
    assert!(matches!(
        store.create(Some("nobody"), new("x")).await.unwrap_err(),
        Error::NotFound { .. }
    ));

    // A patch may not lift a sub-user above its customer ...
    let patch: AccountPatch = serde_json::from_str(r#"{"limits":{"quota_daily":1001}}"#).unwrap();
    assert_eq!(
        field(store.patch(ops, patch).await.unwrap_err())
            .1
            .as_deref(),
        Some("limits.quota_daily")
    );
    // ... nor drop a customer below a sub-user (the message names it).
    let patch: AccountPatch = serde_json::from_str(r#"{"limits":{"quota_daily":400}}"#).unwrap();
    let err = store.patch(C("acme"), patch).await.unwrap_err();
    assert!(err.to_string().contains("ops.acme"), "{err}");
    assert_eq!(err.field(), Some("limits.quota_daily"));
    assert_eq!(
        store.account(C("acme")).await.unwrap().limits.quota_daily,
        Some(1000)
    );

    let page = store.list(Some("acme"), None, None).await.unwrap();
    assert_eq!(page.items.len(), 1);
    let rotated = store.rotate_password(ops).await.unwrap();
    assert_eq!(rotated.name, "ops.acme");

    // Deleting the customer deletes its sub-users.
    store.delete(C("acme")).await.unwrap();
    assert!(matches!(
        store.account(ops).await.unwrap_err(),
        Error::NotFound { .. }
    ));
    assert!(store.snapshot().await.unwrap().accounts.is_empty());
    store.close().await;
}

async fn tokens(store: Store) {
    let created = store
        .create_token(NewToken {
            label: "volunteers 2026".into(),
            max_agents: Some(50),
        })
        .await
        .unwrap();
    assert_eq!(created.secret.len(), 64);
    let found = store
        .token_by_secret(&created.secret)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(found.token, created.token);
    assert!(!found.revoked);
    assert!(store
        .token_by_secret("not-a-token")
        .await
        .unwrap()
        .is_none());
    assert_eq!(
        field(
            store
                .create_token(NewToken {
                    label: " ".into(),
                    max_agents: None
                })
                .await
                .unwrap_err()
        )
        .1
        .as_deref(),
        Some("label")
    );

    store
        .mark_tokens_used(std::slice::from_ref(&created.token.id), 1_800_000_000)
        .await
        .unwrap();
    let listed = store.list_tokens(None, None).await.unwrap();
    assert_eq!(listed.items.len(), 1);
    assert_eq!(
        listed.items[0].last_used_at.as_deref(),
        Some("2027-01-15T08:00:00Z")
    );

    let revoked = store.revoke_token(&created.token.id).await.unwrap();
    assert!(revoked.revoked_at.is_some());
    assert!(
        store
            .token_by_secret(&created.secret)
            .await
            .unwrap()
            .unwrap()
            .revoked
    );
    assert!(matches!(
        store.revoke_token("0000000000000000").await.unwrap_err(),
        Error::NotFound { .. }
    ));
    store.close().await;
}

fn at(text: &str) -> i64 {
    parse_time("t", text).unwrap()
}

fn record(t: &str, account: &str, up: u64, down: u64) -> UsageRecord {
    UsageRecord {
        at: at(t),
        account: account.into(),
        bytes_up: up,
        bytes_down: down,
        connections: 1,
        ..UsageRecord::default()
    }
}

async fn usage(store: Store) {
    let parent = NewAccount {
        limits: Limits {
            quota_daily: Some(1000),
            quota_monthly: Some(2500),
            ..Limits::default()
        },
        ..new("acme")
    };
    store.create(None, parent).await.unwrap();
    store.create(Some("acme"), new("ops")).await.unwrap();
    let ops = AccountRef::SubUser {
        customer: "acme",
        sub: "ops",
    };
    let failed = UsageRecord {
        error: Some("target_unreachable".into()),
        exit: Some("dev1".into()),
        ..record("2026-12-07T10:30:00Z", "acme", 0, 0)
    };
    let outcome = store
        .record_batch(&[
            UsageRecord {
                exit: Some("dev1".into()),
                target: Some("www.example.co.uk".into()),
                ..record("2026-12-07T10:05:00Z", "acme", 100, 200)
            },
            UsageRecord {
                exit: Some("dev1".into()),
                target: Some("api.example.co.uk".into()),
                ..record("2026-12-07T10:59:59Z", "ops.acme", 10, 20)
            },
            UsageRecord {
                exit: Some("dev2".into()),
                target: Some("203.0.113.9".into()),
                ..record("2026-12-07T12:00:00Z", "acme", 1, 2)
            },
            failed.clone(),
            failed,
            record("2026-12-01T00:00:00Z", "acme", 1000, 0),
            record("2026-11-30T23:59:59Z", "acme", 7, 0),
            record("2026-12-07T10:00:00Z", "ghost", 5, 5),
        ])
        .await
        .unwrap();
    assert_eq!(outcome.recorded, 7);
    assert_eq!(outcome.unknown_accounts, ["ghost"]);

    // Hourly buckets: the customer's include its sub-user's.
    let hours = store
        .usage(
            C("acme"),
            at("2026-12-07T10:00:00Z"),
            at("2026-12-07T13:00:00Z"),
            Step::Hour,
        )
        .await
        .unwrap();
    assert_eq!(hours.len(), 3);
    assert_eq!(hours[0].start, "2026-12-07T10:00:00Z");
    assert_eq!((hours[0].bytes_up, hours[0].bytes_down), (110, 220));
    assert_eq!(hours[0].connections, 4);
    assert_eq!(hours[0].errors.get("target_unreachable"), Some(&2));
    assert_eq!((hours[1].bytes_up, hours[1].connections), (0, 0));
    assert_eq!(hours[2].bytes_down, 2);
    let own = store
        .usage(
            ops,
            at("2026-12-07T10:00:00Z"),
            at("2026-12-07T11:00:00Z"),
            Step::Hour,
        )
        .await
        .unwrap();
    assert_eq!((own[0].bytes_up, own[0].bytes_down), (10, 20));

    let days = store
        .usage(
            C("acme"),
            at("2026-11-30T05:00:00Z"),
            at("2026-12-08"),
            Step::Day,
        )
        .await
        .unwrap();
    assert_eq!(days.len(), 8);
    assert_eq!(days[0].start, "2026-11-30T00:00:00Z");
    assert_eq!(days[0].bytes_up, 7);
    assert_eq!(days[1].bytes_up, 1000);
    assert_eq!(days[7].bytes_up + days[7].bytes_down, 333);
    assert_eq!(days[7].errors.get("target_unreachable"), Some(&2));

    // Ranges are checked.
    assert_eq!(
        field(
            store
                .usage(C("acme"), at("2026-12-07"), at("2026-12-06"), Step::Hour)
                .await
                .unwrap_err()
        )
        .1
        .as_deref(),
        Some("to")
    );
    assert_eq!(
        field(
            store
                .usage(C("acme"), 0, at("2026-12-07"), Step::Hour)
                .await
                .unwrap_err()
        )
        .1
        .as_deref(),
        Some("to")
    );
    assert!(matches!(
        store
            .usage(C("ghost"), 0, HOUR, Step::Hour)
            .await
            .unwrap_err(),
        Error::NotFound { .. }
    ));

    // Registrable domains, merged across subdomains and the sub-user.
    let domains = store.domains(C("acme"), at("2026-12-07")).await.unwrap();
    assert_eq!(domains[0].domain, "example.co.uk");
    assert_eq!(domains[0].bytes, 330);
    assert_eq!(domains[1].domain, "203.0.113.9");

    // Exits per day.
    let exit = store
        .exit_usage("dev1", at("2026-12-06"), at("2026-12-08"))
        .await
        .unwrap();
    assert_eq!(exit.len(), 2);
    assert_eq!(exit[0].bytes, 0);
    assert_eq!(
        (exit[1].day.as_str(), exit[1].bytes, exit[1].streams),
        ("2026-12-07", 330, 4)
    );

    // Periods: today, this month, lifetime; the customer's include the sub-user's.
    let now = at("2026-12-07T15:00:00Z");
    let periods = store.period_usage(C("acme"), now).await.unwrap();
    assert_eq!(
        (periods.today, periods.month, periods.lifetime),
        (333, 1333, 1340)
    );
    let own = store.period_usage(ops, now).await.unwrap();
    assert_eq!((own.today, own.month, own.lifetime), (30, 30, 30));

    // Under quota, then over the daily quota: it resets at the next midnight.
    let status = store.quota_status(C("acme"), now).await.unwrap();
    assert!(status.exhausted.is_none(), "{status:?}");
    store
        .record_batch(&[record("2026-12-07T14:00:00Z", "ops.acme", 700, 0)])
        .await
        .unwrap();
    let status = store.quota_status(C("acme"), now).await.unwrap();
    let exhausted = status.exhausted.expect("the daily quota ran out");
    assert_eq!(exhausted.period, "daily");
    assert_eq!((exhausted.quota, exhausted.used), (1000, 1033));
    assert_eq!(exhausted.resets_at.as_deref(), Some("2026-12-08T00:00:00Z"));
    // The sub-user has no quota of its own, but its customer's ran out.
    let status = store.quota_status(ops, now).await.unwrap();
    assert_eq!(status.exhausted.unwrap().account, "acme");
    // The next day the daily quota is fresh; the monthly one is not yet spent.
    let tomorrow = now + DAY;
    assert!(store
        .quota_status(C("acme"), tomorrow)
        .await
        .unwrap()
        .exhausted
        .is_none());
    store
        .record_batch(&[record("2026-12-08T01:00:00Z", "acme", 900, 0)])
        .await
        .unwrap();
    let exhausted = store
        .quota_status(C("acme"), tomorrow)
        .await
        .unwrap()
        .exhausted
        .unwrap();
    assert_eq!(exhausted.period, "monthly");
    assert_eq!(exhausted.resets_at.as_deref(), Some("2027-01-01T00:00:00Z"));

    // A batch with a bad record is refused whole.
    let before = store.period_usage(C("acme"), tomorrow).await.unwrap();
    let bad = [
        record("2026-12-08T02:00:00Z", "acme", 5, 5),
        record("2026-12-08T02:00:00Z", "acme", u64::MAX, 0),
    ];
    assert_eq!(
        field(store.record_batch(&bad).await.unwrap_err())
            .1
            .as_deref(),
        Some("records[1].bytes_up")
    );
    assert_eq!(
        store.period_usage(C("acme"), tomorrow).await.unwrap(),
        before
    );

    // Deleting the sub-user takes its usage out of the customer's.
    store.delete(ops).await.unwrap();
    let after = store.period_usage(C("acme"), tomorrow).await.unwrap();
    assert_eq!(after.lifetime, before.lifetime - 730);
    store.close().await;
}

async fn top_domains(store: Store) {
    store.create(None, new("acme")).await.unwrap();
    let records: Vec<_> = (0..150u64)
        .map(|i| UsageRecord {
            target: Some(format!("www.site{i}.com")),
            ..record("2026-12-07T10:00:00Z", "acme", i + 1, 0)
        })
        .collect();
    store.record_batch(&records).await.unwrap();
    let domains = store.domains(C("acme"), at("2026-12-07")).await.unwrap();
    assert_eq!(domains.len(), 100);
    assert_eq!(domains[0].domain, "site149.com");
    assert_eq!(domains[0].bytes, 150);
    assert_eq!(domains[99].bytes, 51);
    assert!(store
        .domains(C("acme"), at("2026-12-06"))
        .await
        .unwrap()
        .is_empty());
    store.close().await;
}

async fn retention(fresh: &mut Fresh) {
    let store = fresh
        .store_with(Retention {
            hourly_days: 2,
            daily_days: 10,
            domain_days: 2,
        })
        .await;
    store.create(None, new("acme")).await.unwrap();
    let old = "2026-11-01T10:00:00Z";
    store
        .record_batch(&[
            UsageRecord {
                target: Some("example.com".into()),
                exit: Some("dev1".into()),
                ..record(old, "acme", 100, 0)
            },
            record("2026-12-06T10:00:00Z", "acme", 1, 0),
        ])
        .await
        .unwrap();
    let now = at("2026-12-07T12:00:00Z");
    let pruned = store.prune(now).await.unwrap();
    assert_eq!((pruned.hourly, pruned.daily, pruned.domains), (1, 2, 1));
    let days = store
        .usage(C("acme"), at("2026-11-01"), at("2026-11-02"), Step::Day)
        .await
        .unwrap();
    assert_eq!(days[0].bytes_up, 0);
    let hours = store
        .usage(
            C("acme"),
            at("2026-12-06T10:00:00Z"),
            at("2026-12-06T11:00:00Z"),
            Step::Hour,
        )
        .await
        .unwrap();
    assert_eq!(hours[0].bytes_up, 1);
    // Lifetime totals outlive the buckets.
    assert_eq!(
        store.period_usage(C("acme"), now).await.unwrap().lifetime,
        101
    );
    assert_eq!(store.prune(now).await.unwrap().hourly, 0);
    store.close().await;
}

async fn snapshot_and_revision(store: Store) {
    let r0 = store.revision().await.unwrap();
    let limits = Limits {
        allow_ips: vec!["203.0.113.0/24".into()],
        blocked_domains: vec!["Example.org".into()],
        ..Limits::default()
    };
    store
        .create(
            None,
            NewAccount {
                limits,
                ..new("acme")
            },
        )
        .await
        .unwrap();
    store.create(Some("acme"), new("ops")).await.unwrap();
    let r1 = store.revision().await.unwrap();
    assert!(r1 > r0);
    // Reads do not move it.
    store.list(None, None, None).await.unwrap();
    assert_eq!(store.revision().await.unwrap(), r1);
    let token = store
        .create_token(NewToken {
            label: "t".into(),
            max_agents: None,
        })
        .await
        .unwrap();
    store.revoke_token(&token.token.id).await.unwrap();
    let r2 = store.revision().await.unwrap();
    assert!(r2 > r1);

    let snapshot = store.snapshot().await.unwrap();
    assert_eq!(snapshot.revision, r2);
    let names: Vec<_> = snapshot.accounts.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(names, ["acme", "ops.acme"]);
    let acme = &snapshot.accounts[0];
    assert_eq!(
        acme.networks,
        ["203.0.113.0/24".parse::<ipnet::IpNet>().unwrap()]
    );
    assert_eq!(acme.limits.blocked_domains, ["example.org"]);
    assert_eq!(snapshot.accounts[1].customer.as_deref(), Some("acme"));
    store.close().await;
}

async fn newer_schema_refused(fresh: &mut Fresh) {
    let location = fresh.location().await;
    let store = Store::open(&location, Retention::default()).await.unwrap();
    store.close().await;
    // Reopening a current database is fine.
    Store::open(&location, Retention::default())
        .await
        .unwrap()
        .close()
        .await;

    let url = if location.starts_with("postgres") {
        location.clone()
    } else {
        format!("sqlite://{location}")
    };
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(&url).await.unwrap();
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (9999, 'from the future', $1, $2, 0)",
    )
    .bind(true)
    .bind(vec![0u8; 48])
    .execute(&pool)
    .await
    .unwrap();
    pool.close().await;
    let err = Store::open(&location, Retention::default())
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::SchemaTooNew {
                found: 9999,
                known: 2
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("newer than this build"), "{err}");
}
