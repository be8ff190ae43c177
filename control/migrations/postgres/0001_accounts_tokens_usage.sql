-- The accounts (customers and their sub-users), agent tokens and usage
-- history. Times are Unix seconds (UTC); lists are JSON arrays in TEXT, so
-- SQLite and PostgreSQL are read by one code path. Amounts are bytes.

-- A customer (customer_id NULL) or a sub-user of one (name "sub.customer").
CREATE TABLE accounts (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    customer_id BIGINT REFERENCES accounts (id) ON DELETE CASCADE,
    password_hash TEXT NOT NULL,
    enabled BIGINT NOT NULL DEFAULT 1,
    countries TEXT NOT NULL DEFAULT '[]',
    max_connections BIGINT,
    requests_per_second BIGINT,
    quota_daily BIGINT,
    quota_monthly BIGINT,
    quota_lifetime BIGINT,
    allow_ips TEXT NOT NULL DEFAULT '[]',
    blocked_domains TEXT NOT NULL DEFAULT '[]',
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX accounts_customer ON accounts (customer_id, name);

-- Bumped by every change to accounts or tokens: a gateway polls it and
-- reloads its in-memory view when it moves.
CREATE TABLE revision (
    id BIGINT PRIMARY KEY,
    value BIGINT NOT NULL
);
INSERT INTO revision (id, value) VALUES (1, 0);

CREATE TABLE agent_tokens (
    id TEXT PRIMARY KEY,
    label TEXT NOT NULL,
    secret_sha256 TEXT NOT NULL UNIQUE,
    max_agents BIGINT,
    created_at BIGINT NOT NULL,
    last_used_at BIGINT,
    revoked_at BIGINT
);

-- Per account per hour (kept 90 days by default).
CREATE TABLE usage_hourly (
    account_id BIGINT NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    hour BIGINT NOT NULL,
    bytes_up BIGINT NOT NULL,
    bytes_down BIGINT NOT NULL,
    connections BIGINT NOT NULL,
    PRIMARY KEY (account_id, hour)
);

-- Failed connections per account per hour, by error code.
CREATE TABLE usage_errors_hourly (
    account_id BIGINT NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    hour BIGINT NOT NULL,
    code TEXT NOT NULL,
    count BIGINT NOT NULL,
    PRIMARY KEY (account_id, hour, code)
);

-- Per account per UTC day (kept two years by default): day-step history and
-- the daily and monthly quota periods.
CREATE TABLE usage_daily (
    account_id BIGINT NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    day BIGINT NOT NULL,
    bytes_up BIGINT NOT NULL,
    bytes_down BIGINT NOT NULL,
    connections BIGINT NOT NULL,
    PRIMARY KEY (account_id, day)
);

-- Per account, never pruned: the lifetime quota period.
CREATE TABLE usage_lifetime (
    account_id BIGINT PRIMARY KEY REFERENCES accounts (id) ON DELETE CASCADE,
    bytes_up BIGINT NOT NULL,
    bytes_down BIGINT NOT NULL
);

-- Per exit (device id) per UTC day, for payouts.
CREATE TABLE exit_usage_daily (
    exit_id TEXT NOT NULL,
    day BIGINT NOT NULL,
    bytes BIGINT NOT NULL,
    streams BIGINT NOT NULL,
    PRIMARY KEY (exit_id, day)
);

-- Per account per UTC day, bytes by registrable target domain; trimmed to the
-- largest 1000 per account and day (the API shows the top 100).
CREATE TABLE domain_usage_daily (
    account_id BIGINT NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    day BIGINT NOT NULL,
    domain TEXT NOT NULL,
    bytes BIGINT NOT NULL,
    PRIMARY KEY (account_id, day, domain)
);

