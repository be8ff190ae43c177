// The dashboard's pages. Each page builds its view once and returns a
// refresh function the router calls on a timer, so forms keep what the
// operator is typing while the figures around them update.
import { get, post, patch, del, canWrite, seg, ApiError } from "./api.js";
import * as fmt from "./format.js";
import { rankedBars, lineChart, columns, quotaBar } from "./charts.js";

/** Builds an element: h("p", {class: "x"}, "text", child…). */
export function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "class") node.className = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

const card = (title, ...body) => h("section", { class: "card", "data-card": title }, h("h2", {}, title), ...body);
const empty = (...text) => h("p", { class: "empty" }, ...text);
const stat = (label, value, note) => h("div", { class: "stat" }, h("div", { class: "stat-value" }, value), h("div", { class: "stat-label" }, label), note ? h("div", { class: "stat-note" }, note) : null);
const writeOnly = (node) => (canWrite() ? node : null);

/** Shows an API failure in place; says plainly when a part of the API is missing. */
function failure(error) {
  if (error instanceof ApiError && error.status === 404 && error.body && error.body.error === "no_route") {
    return h("p", { class: "notice" }, "This gateway has no such API route (", error.message, "). It may be older than this dashboard.");
  }
  if (error instanceof ApiError && error.status === 409) {
    return h("p", { class: "notice" }, error.message);
  }
  return h("p", { class: "error" }, error.message || String(error));
}

function table(head, rows, emptyText) {
  if (rows.length === 0) return empty(emptyText);
  return h("div", { class: "table-wrap" },
    h("table", {}, h("thead", {}, h("tr", {}, head.map((title) => h("th", {}, title)))), h("tbody", {}, rows)));
}

/** A secret shown once, with a copy button. */
function shownOnce(what, secret) {
  const box = h("div", { class: "once", role: "status" },
    h("strong", {}, `${what} (shown once — copy it now):`),
    h("code", { class: "secret" }, secret),
    h("button", { type: "button", class: "small", onclick: () => navigator.clipboard && navigator.clipboard.writeText(secret) }, "Copy"));
  return box;
}

function fill(node, ...children) {
  node.replaceChildren(...children.flat().filter((c) => c !== null && c !== undefined));
}

// ---- Overview -------------------------------------------------------------

const BAND_ORDER = ["healthy", "degraded", "failing", "cooling"];

export function overview(view) {
  const head = h("div", { class: "stats" });
  const countries = card("Agents online by country");
  const traffic = card("Traffic, the last hour");
  const health = card("Exit health");
  const transports = card("Transports");
  const errors = card("Errors by code");
  const fleet = card("Fleet and database");
  fill(view, h("h1", {}, "Overview"), head, h("div", { class: "grid two" }, countries, traffic, health, transports, errors, fleet));
  return async () => {
    const o = await get("/overview");
    fill(head,
      stat("agents online", fmt.count(o.agents), `${fmt.count(o.accepting)} accepting`),
      stat("live connections", fmt.count(o.live_connections)),
      stat("live streams", fmt.count(o.live_streams)),
      stat("sticky sessions", fmt.count(o.sessions)),
      stat("moved", fmt.bytes(o.bytes_up + o.bytes_down), `${fmt.bytes(o.bytes_up)} up · ${fmt.bytes(o.bytes_down)} down`),
      stat("up", fmt.duration(o.uptime_secs)));
    fill(countries, h("h2", {}, "Agents online by country"),
      o.countries.length
        ? rankedBars(o.countries.map(([country, n]) => ({ label: country, value: n, note: `${n} agents in ${country}` })), fmt.count)
        : empty("No agent is connected. Start one with ", h("code", {}, "agent --gateway HOST:4433 --pin PIN --token TOKEN"), " (docs/agents.md) or run ", h("code", {}, "gateway --demo"), "."));
    const rates = o.rates || [];
    const span = rates.length ? rates[rates.length - 1].at - rates[0].at : 0;
    fill(traffic, h("h2", {}, "Traffic, the last hour"),
      lineChart([
        { name: "down", cls: "down", points: rates.map((r) => [r.at, r.down_per_sec]) },
        { name: "up", cls: "up", points: rates.map((r) => [r.at, r.up_per_sec]) },
      ], { format: fmt.rate, label: (t) => fmt.clock(t, span < 600), empty: "Traffic appears here a few seconds after start (a sample every 10 s, the hour kept in the gateway)." }));
    fill(health, h("h2", {}, "Exit health"),
      o.agents
        ? rankedBars(BAND_ORDER.map((band) => ({ label: band, value: o.health[band] || 0, cls: band })), (n) => `${fmt.count(n)} · ${fmt.percent(n, o.agents)}`)
        : empty("Health appears once agents connect."));
    fill(transports, h("h2", {}, "Transports"),
      rankedBars([{ label: "QUIC", value: o.transports.quic }, { label: "TLS over TCP", value: o.transports.tcp }], fmt.count));
    fill(errors, h("h2", {}, "Errors by code"),
      o.errors.length
        ? rankedBars(o.errors.map(([code, n]) => ({ label: code, value: n, cls: "failing" })), fmt.count)
        : empty("No errors so far. The README's error table explains each code when one appears."));
    const db = o.database;
    const database = db
      ? h("p", {}, "Database: ", db.backend, db.accounts_from_store ? " (accounts and usage history)" : " (usage history; accounts come from the --users file)", " · ",
        db.stalled ? h("span", { class: "bad" }, db.stalled) : h("span", { class: "ok" }, "in reach"))
      : h("p", {}, "No database: accounts come from flags and files, and no usage history is kept (", h("code", {}, "--database"), ", docs/control.md).");
    if (o.fleet) {
      const f = o.fleet;
      const rows = f.gateways.map((g) => h("tr", {},
        h("td", {}, g.id, g.this ? h("span", { class: "badge" }, "this one") : null),
        h("td", {}, fmt.count(g.agents)), h("td", {}, fmt.count(g.live_connections)), h("td", {}, fmt.count(g.live_streams)),
        h("td", {}, fmt.bytes(g.bytes_up + g.bytes_down)), h("td", {}, g.peer_link || "–")));
      fill(fleet, h("h2", {}, "Fleet and database"), database,
        h("p", {}, "Redis: ", f.redis.reachable ? h("span", { class: "ok" }, "in reach") : h("span", { class: "bad" }, `out of reach for ${fmt.duration(f.redis.since_secs)}: ${f.redis.reason}`)),
        o.ready ? h("p", { class: "bad" }, o.ready) : null,
        table(["gateway", "agents", "connections", "streams", "moved", "peer link"], rows, "No gateway has sent a heartbeat yet."));
    } else {
      fill(fleet, h("h2", {}, "Fleet and database"), database,
        empty("This gateway runs alone. Start several with ", h("code", {}, "--redis URL"), " to share one pool (docs/fleet.md)."));
    }
  };
}

// ---- Exits ----------------------------------------------------------------

export function exits(view) {
  const form = h("form", { class: "filters", onsubmit: (e) => { e.preventDefault(); state.offset = 0; refresh(); } },
    h("label", {}, "Country ", h("input", { name: "country", size: 4, placeholder: "DE" })),
    h("label", {}, "Transport ", h("select", { name: "transport" }, h("option", { value: "" }, "any"), h("option", { value: "quic" }, "QUIC"), h("option", { value: "tcp" }, "TLS over TCP"))),
    h("label", {}, "Health ", h("select", { name: "health" }, h("option", { value: "" }, "any"), BAND_ORDER.map((b) => h("option", { value: b }, b)))),
    h("label", {}, "Search ", h("input", { name: "q", placeholder: "exit id, city, region, ASN" })),
    h("button", { type: "submit" }, "Filter"));
  const state = { offset: 0, limit: 50 };
  const result = h("div", {});
  const message = h("div", {});
  fill(view, h("h1", {}, "Exits"), form, message, result);
  async function ban(id) {
    if (!confirm(`Ban exit ${id}? Its device is disconnected now and refused until unbanned.`)) return;
    try {
      await post(`/v1/exits/${seg(id)}/ban`);
      fill(message, h("p", { class: "ok" }, `Exit ${id} is banned.`));
      await refresh();
    } catch (error) {
      fill(message, failure(error));
    }
  }
  async function refresh() {
    const params = new URLSearchParams();
    for (const [key, value] of new FormData(form)) if (value) params.set(key, value);
    params.set("offset", state.offset);
    params.set("limit", state.limit);
    const page = await get(`/exits?${params}`);
    const rows = page.items.map((x) => h("tr", {},
      h("td", {}, h("a", { href: `#/exits/${encodeURIComponent(x.exit_id)}` }, x.exit_id)),
      h("td", {}, x.country || "–"), h("td", {}, x.region || "–"), h("td", {}, x.city || "–"),
      h("td", {}, x.asn ? `AS${x.asn}` : "–"), h("td", {}, x.transport || "–"),
      h("td", {}, h("span", { class: `band ${x.health}` }, x.health), " ", fmt.percent(x.success_rate, 1)),
      h("td", {}, `${x.live_streams} / ${x.max_streams}`),
      h("td", {}, fmt.bytes(x.bytes_up + x.bytes_down)),
      h("td", {}, fmt.time(x.connected_at, { relative: true })),
      h("td", {}, writeOnly(h("button", { type: "button", class: "small danger", onclick: () => ban(x.exit_id) }, "Ban")))));
    const pager = h("p", { class: "pager" },
      `${page.total ? page.offset + 1 : 0}–${page.offset + page.items.length} of ${fmt.count(page.total)} `,
      state.offset > 0 ? h("button", { type: "button", class: "small", onclick: () => { state.offset = Math.max(0, state.offset - state.limit); refresh(); } }, "Previous") : null,
      page.offset + page.items.length < page.total ? h("button", { type: "button", class: "small", onclick: () => { state.offset += state.limit; refresh(); } }, "Next") : null);
    fill(result, table(["exit", "country", "region", "city", "ASN", "transport", "health", "streams", "moved since join", "joined", ""], rows,
      "No exit matches. Clear the filters, or connect an agent (docs/agents.md)."), pager);
    await bannedList();
  }
  const banned = h("div", {});
  view.append(banned);
  async function bannedList() {
    let list;
    try {
      list = await get("/v1/exits?banned=true");
    } catch (error) {
      fill(banned, card("Banned exits", failure(error)));
      return;
    }
    const items = list.banned || [];
    fill(banned, card("Banned exits", table(["exit", "banned", "reason", "connected", ""], items.map((x) => h("tr", {},
      h("td", {}, x.id), h("td", {}, fmt.time(x.since, { relative: true })), h("td", {}, x.reason || "–"),
      h("td", {}, x.connected ? "held by another gateway" : "no"),
      h("td", {}, writeOnly(h("button", { type: "button", class: "small", onclick: async () => {
        try { await post(`/v1/exits/${seg(x.id)}/unban`); fill(message, h("p", { class: "ok" }, `Exit ${x.id} may join again.`)); await refresh(); } catch (error) { fill(message, failure(error)); }
      } }, "Unban"))))), "No exit is banned. A banned exit's device is refused until it is unbanned here.")));
  }
  return refresh;
}

export function exit(view, id) {
  const info = h("div", {});
  const usage = card("Usage per day");
  const message = h("div", {});
  fill(view, h("p", {}, h("a", { href: "#/exits" }, "← Exits")), h("h1", {}, `Exit ${id}`), message, info, usage);
  return async () => {
    const page = await get(`/exits?q=${encodeURIComponent(id)}&limit=50`);
    const x = page.items.find((item) => item.exit_id === id);
    if (!x) {
      fill(info, empty("This exit is not connected now (it left, or it is banned). Its history stays below."));
    } else {
      fill(info, h("div", { class: "stats" },
        stat("country", x.country || "–", [x.region, x.city].filter(Boolean).join(", ") || null),
        stat("ASN", x.asn ? `AS${x.asn}` : "–"),
        stat("transport", x.transport || "–", x.gateway ? `via ${x.gateway}` : null),
        stat("health", x.health, `success ${fmt.percent(x.success_rate, 1)}`),
        stat("streams", `${x.live_streams} / ${x.max_streams}`, `${fmt.count(x.streams_total)} in all`),
        stat("moved since join", fmt.bytes(x.bytes_up + x.bytes_down)),
        stat("joined", fmt.time(x.connected_at, { relative: true }), x.software)),
        writeOnly(h("p", { class: "actions" }, h("button", { type: "button", class: "danger", onclick: async () => {
          if (!confirm(`Ban exit ${id}?`)) return;
          try { await post(`/v1/exits/${seg(id)}/ban`); fill(message, h("p", { class: "ok" }, `Exit ${id} is banned.`)); } catch (error) { fill(message, failure(error)); }
        } }, "Ban this exit"))));
    }
    try {
      const report = await get(`/v1/exits/${seg(id)}/usage`);
      fill(usage, h("h2", {}, "Usage per day"), columns((report.days || []).map((d) => ({ label: d.day.slice(5), value: d.bytes, title: `${d.day}: ${fmt.bytes(d.bytes)}, ${fmt.count(d.streams)} streams` })), { format: fmt.bytes, empty: "No traffic through this exit in the last 30 days." }));
    } catch (error) {
      fill(usage, h("h2", {}, "Usage per day"), failure(error));
    }
  };
}

// ---- Customers ------------------------------------------------------------

const GB = 1e9;
const gbOrNull = (value) => (value === "" || value === null || value === undefined ? null : Math.round(Number(value) * GB));
const intOrNull = (value) => (value === "" || value === null || value === undefined ? null : Math.round(Number(value)));
const listOf = (text) => text.split(/[\s,]+/).map((s) => s.trim()).filter(Boolean);

function limitsFields(limits = {}) {
  const gb = (bytes) => (bytes === null || bytes === undefined ? "" : String(bytes / GB));
  return [
    h("label", {}, "Daily quota (GB) ", h("input", { name: "quota_daily", type: "number", min: 0, step: "any", value: gb(limits.quota_daily), placeholder: "none" })),
    h("label", {}, "Monthly quota (GB) ", h("input", { name: "quota_monthly", type: "number", min: 0, step: "any", value: gb(limits.quota_monthly), placeholder: "none" })),
    h("label", {}, "Lifetime quota (GB) ", h("input", { name: "quota_lifetime", type: "number", min: 0, step: "any", value: gb(limits.quota_lifetime), placeholder: "none" })),
    h("label", {}, "Max connections ", h("input", { name: "max_connections", type: "number", min: 0, value: limits.max_connections ?? "", placeholder: "none" })),
    h("label", {}, "Requests/s ", h("input", { name: "requests_per_second", type: "number", min: 0, value: limits.requests_per_second ?? "", placeholder: "none" })),
    h("label", {}, "Countries ", h("input", { name: "countries", value: (limits.countries || []).join(" "), placeholder: "any (e.g. US DE)" })),
  ];
}

function limitsFrom(form) {
  const data = new FormData(form);
  return {
    quota_daily: gbOrNull(data.get("quota_daily")),
    quota_monthly: gbOrNull(data.get("quota_monthly")),
    quota_lifetime: gbOrNull(data.get("quota_lifetime")),
    max_connections: intOrNull(data.get("max_connections")),
    requests_per_second: intOrNull(data.get("requests_per_second")),
    countries: listOf(data.get("countries") || ""),
  };
}

export function customers(view) {
  const message = h("div", {});
  const list = h("div", {});
  const form = h("form", { class: "inline-form", onsubmit: async (e) => {
    e.preventDefault();
    const name = new FormData(form).get("name").trim();
    try {
      const created = await post("/v1/customers", { name, limits: limitsFrom(form) });
      form.reset();
      fill(message, h("p", { class: "ok" }, "Customer ", h("a", { href: `#/customers/${encodeURIComponent(created.account.name)}` }, created.account.name), " created."),
        created.password ? shownOnce(`Password of ${created.account.name}`, created.password) : null);
      await refresh();
    } catch (error) {
      fill(message, failure(error));
    }
  } }, h("label", {}, "Name ", h("input", { name: "name", required: true, placeholder: "acme", autocomplete: "off" })), limitsFields(), h("button", { type: "submit" }, "Create customer"));
  fill(view, h("h1", {}, "Customers"), writeOnly(card("New customer", form)), message, list);
  async function refresh() {
    let page;
    try {
      page = await get("/v1/customers?limit=100");
    } catch (error) {
      fill(list, failure(error));
      return;
    }
    const quotas = await Promise.all(page.items.map((c) => get(`/v1/customers/${seg(c.name)}/quota`).catch(() => null)));
    const rows = page.items.map((c, i) => {
      const q = quotas[i];
      const usage = q ? q.usage : { today: 0, month: 0, lifetime: 0 };
      return h("tr", {},
        h("td", {}, h("a", { href: `#/customers/${encodeURIComponent(c.name)}` }, c.name), c.enabled ? null : h("span", { class: "badge bad" }, "disabled")),
        h("td", {}, quotaBar(usage.today, c.limits.quota_daily, fmt.bytes)),
        h("td", {}, quotaBar(usage.month, c.limits.quota_monthly, fmt.bytes)),
        h("td", {}, fmt.bytes(usage.lifetime)),
        h("td", {}, (c.limits.countries || []).join(" ") || "any"),
        h("td", {}, fmt.time(c.created_at, { relative: true })));
    });
    fill(list, table(["customer", "today", "this month", "lifetime", "countries", "created"], rows,
      canWrite() ? "No customer yet. Create one above; its password is shown once." : "No customer yet. An operator with the admin token creates them."),
      page.next ? h("p", { class: "muted" }, "Showing the first 100 customers; the CLI lists all (gateway customers list).") : null);
  }
  return refresh;
}

function connectionRows(items, onClose) {
  const now = Date.now() / 1000;
  return items.map((c) => h("tr", { "data-id": c.id },
    h("td", {}, String(c.id)), h("td", {}, c.customer || c.user || "–"), h("td", {}, c.source || c.peer || "–"),
    h("td", {}, c.target || "–"), h("td", {}, c.exit || c.exit_id || "–"), h("td", {}, c.country || "–"), h("td", {}, c.protocol || "–"),
    h("td", {}, fmt.bytes((c.bytes_up || 0) + (c.bytes_down || 0))),
    h("td", {}, fmt.duration(c.age_secs ?? (c.since ? now - Date.parse(c.since) / 1000 : 0))),
    h("td", {}, writeOnly(h("button", { type: "button", class: "small danger", onclick: () => onClose(c) }, "Close")))));
}

const CONNECTION_HEAD = ["id", "customer", "source", "target", "exit", "country", "protocol", "moved", "age", ""];

async function closeConnection(c, message) {
  try {
    await del(`/v1/connections/${seg(String(c.id))}`);
    fill(message, h("p", { class: "ok" }, `Connection ${c.id} (${c.customer || c.user} → ${c.target}) closed.`));
  } catch (error) {
    fill(message, failure(error));
  }
}

export function customer(view, name) {
  const message = h("div", {});
  const head = h("div", {});
  const hourly = card("Last 24 hours, by hour");
  const daily = card("Last 30 days, by day");
  const domains = card("Top domains today");
  const live = card("Live connections");
  live.classList.add("wide");
  const subs = card("Sub-users");
  const limits = card("Limits");
  fill(view, h("p", {}, h("a", { href: "#/customers" }, "← Customers")), h("h1", {}, name), message, head,
    h("div", { class: "grid two" }, hourly, daily, live, domains, limits, subs));
  let formsBuilt = false;
  const path = `/v1/customers/${seg(name)}`;
  async function action(what, run) {
    try {
      await run();
    } catch (error) {
      fill(message, failure(error));
      return;
    }
    if (what) fill(message, h("p", { class: "ok" }, what));
    await refresh();
  }
  function buildForms(c) {
    const limitsForm = h("form", { class: "inline-form", onsubmit: (e) => {
      e.preventDefault();
      action("Limits saved: in force for the next connection.", () => patch(path, { limits: limitsFrom(limitsForm) }));
    } }, limitsFields(c.limits), writeOnly(h("button", { type: "submit" }, "Save limits")));
    if (!canWrite()) for (const input of limitsForm.querySelectorAll("input")) input.disabled = true;
    fill(limits, h("h2", {}, "Limits"), limitsForm);
    const subForm = h("form", { class: "inline-form", onsubmit: async (e) => {
      e.preventDefault();
      const sub = new FormData(subForm).get("sub").trim();
      try {
        const created = await post(`${path}/sub-users`, { name: sub, limits: {} });
        subForm.reset();
        fill(message, h("p", { class: "ok" }, `Sub-user ${created.account.name} created.`), created.password ? shownOnce(`Password of ${created.account.name}`, created.password) : null);
        await refreshSubs();
      } catch (error) {
        fill(message, failure(error));
      }
    } }, h("label", {}, "Name ", h("input", { name: "sub", required: true, placeholder: "team1" })), h("button", { type: "submit" }, "Add sub-user"));
    fill(subs, h("h2", {}, "Sub-users"), h("div", { class: "sub-list" }), writeOnly(subForm));
  }
  async function refreshSubs() {
    const target = subs.querySelector(".sub-list");
    try {
      const page = await get(`${path}/sub-users?limit=100`);
      fill(target, table(["sub-user", "state", ""], page.items.map((s) => h("tr", {},
        h("td", {}, s.name), h("td", {}, s.enabled ? "enabled" : "disabled"),
        h("td", {}, writeOnly(h("button", { type: "button", class: "small", onclick: () => action(null, async () => {
          const short = s.name.split(".")[0];
          const rotated = await post(`${path}/sub-users/${seg(short)}/rotate-password`);
          fill(message, shownOnce(`New password of ${rotated.name}`, rotated.password));
        }) }, "New password"))))), "No sub-user. Sub-users log in as sub.customer with their own password and limits."));
    } catch (error) {
      fill(target, failure(error));
    }
  }
  async function refresh() {
    const c = await get(path);
    const q = await get(`${path}/quota`).catch(() => null);
    const usage = q ? q.usage : { today: 0, month: 0, lifetime: 0 };
    fill(head,
      h("p", {}, c.enabled ? h("span", { class: "badge ok" }, "enabled") : h("span", { class: "badge bad" }, "disabled"), " created ", fmt.time(c.created_at), ", changed ", fmt.time(c.updated_at, { relative: true })),
      q && q.exhausted ? h("p", { class: "bad" }, `The ${q.exhausted.period} quota ran out`, q.exhausted.resets_at ? ["; it resets ", fmt.time(q.exhausted.resets_at)] : "", ".") : null,
      h("div", { class: "grid three" },
        h("div", {}, h("h3", {}, "Today"), quotaBar(usage.today, c.limits.quota_daily, fmt.bytes)),
        h("div", {}, h("h3", {}, "This month"), quotaBar(usage.month, c.limits.quota_monthly, fmt.bytes)),
        h("div", {}, h("h3", {}, "Lifetime"), quotaBar(usage.lifetime, c.limits.quota_lifetime, fmt.bytes))),
      writeOnly(h("p", { class: "actions" },
        h("button", { type: "button", onclick: () => action(null, async () => {
          const rotated = await post(`${path}/rotate-password`);
          fill(message, shownOnce(`New password of ${rotated.name}`, rotated.password));
        }) }, "Rotate password"),
        c.enabled
          ? h("button", { type: "button", class: "danger", onclick: () => action(`${name} is disabled: new connections are refused.`, () => post(`${path}/disable`)) }, "Disable")
          : h("button", { type: "button", onclick: () => action(`${name} is enabled again.`, () => post(`${path}/enable`)) }, "Enable"))));
    if (!formsBuilt) {
      buildForms(c);
      formsBuilt = true;
      await refreshSubs();
    }
    const [hours, days, top] = await Promise.all([
      get(`${path}/usage?step=hour`).catch((e) => e),
      get(`${path}/usage?step=day`).catch((e) => e),
      get(`${path}/domains`).catch((e) => e),
    ]);
    const bucketColumns = (report, label, emptyText) => report instanceof Error ? failure(report) : columns(report.buckets.map((b) => ({
      label: label(b.start), value: b.bytes_up + b.bytes_down,
      title: `${new Date(b.start).toLocaleString()}: ${fmt.bytes(b.bytes_up + b.bytes_down)}, ${fmt.count(b.connections)} connections`,
    })), { format: fmt.bytes, empty: emptyText });
    fill(hourly, h("h2", {}, "Last 24 hours, by hour"), bucketColumns(hours, (s) => fmt.clock(new Date(s)), "No traffic in the last 24 hours. Usage appears within a few seconds of a request."));
    fill(daily, h("h2", {}, "Last 30 days, by day"), bucketColumns(days, (s) => s.slice(5, 10), "No traffic in the last 30 days."));
    fill(domains, h("h2", {}, "Top domains today"), top instanceof Error ? failure(top)
      : top.domains.length ? rankedBars(top.domains.slice(0, 10).map((d) => ({ label: d.domain, value: d.bytes })), fmt.bytes) : empty("No target reached today."));
    try {
      const conns = await get(`/v1/connections?customer=${encodeURIComponent(name)}&limit=100`);
      const items = conns.items || conns.connections || [];
      fill(live, h("h2", {}, "Live connections"),
        table(CONNECTION_HEAD, connectionRows(items, (conn) => closeConnection(conn, message).then(refresh)), "No live connection. They appear here while the customer's clients are connected."),
        writeOnly(items.length ? h("button", { type: "button", class: "small danger", onclick: () => action(`Every connection of ${name} closed.`, () => del(`/v1/connections?customer=${encodeURIComponent(name)}`)) }, "Close all") : null));
    } catch (error) {
      fill(live, h("h2", {}, "Live connections"), failure(error));
    }
  }
  return refresh;
}

// ---- Agent tokens ---------------------------------------------------------

export function tokens(view) {
  const message = h("div", {});
  const list = h("div", {});
  const form = h("form", { class: "inline-form", onsubmit: async (e) => {
    e.preventDefault();
    const data = new FormData(form);
    try {
      const created = await post("/v1/tokens", { label: data.get("label").trim(), max_agents: intOrNull(data.get("max_agents")) });
      form.reset();
      fill(message, h("p", { class: "ok" }, `Token ${created.token.id} (${created.token.label}) created.`), shownOnce("Agent token", created.secret));
      await refresh();
    } catch (error) {
      fill(message, failure(error));
    }
  } }, h("label", {}, "Label ", h("input", { name: "label", required: true, placeholder: "volunteers-2026" })),
  h("label", {}, "Max agents ", h("input", { name: "max_agents", type: "number", min: 1, placeholder: "no limit" })),
  h("button", { type: "submit" }, "Create token"));
  fill(view, h("h1", {}, "Agent tokens"), writeOnly(card("New agent token", form)), message, list);
  async function refresh() {
    let page;
    try {
      page = await get("/v1/tokens?limit=100");
    } catch (error) {
      fill(list, failure(error));
      return;
    }
    const rows = page.items.map((t) => h("tr", { class: t.revoked_at ? "revoked" : "" },
      h("td", {}, t.id), h("td", {}, t.label), h("td", {}, t.max_agents ?? "no limit"),
      h("td", {}, fmt.time(t.created_at, { relative: true })),
      h("td", {}, t.last_used_at ? fmt.time(t.last_used_at, { relative: true }) : "never"),
      h("td", {}, t.revoked_at ? ["revoked ", fmt.time(t.revoked_at, { relative: true })] : "active"),
      h("td", {}, t.revoked_at ? null : writeOnly(h("button", { type: "button", class: "small danger", onclick: async () => {
        if (!confirm(`Revoke ${t.label}? Agents holding it are disconnected now.`)) return;
        try { await post(`/v1/tokens/${seg(t.id)}/revoke`); fill(message, h("p", { class: "ok" }, `Token ${t.label} revoked.`)); await refresh(); } catch (error) { fill(message, failure(error)); }
      } }, "Revoke")))));
    fill(list, table(["id", "label", "max agents", "created", "last used", "state", ""], rows,
      canWrite() ? "No agent token yet. Create one above and give it to agents with --token." : "No agent token yet."));
  }
  return refresh;
}

// ---- Live -----------------------------------------------------------------

export function live(view) {
  const message = h("div", {});
  const form = h("form", { class: "filters", onsubmit: (e) => { e.preventDefault(); refresh(); } },
    h("label", {}, "Customer ", h("input", { name: "customer", placeholder: "any" })),
    h("label", {}, "Country ", h("input", { name: "country", size: 4, placeholder: "any" })));
  form.addEventListener("input", () => refresh());
  const list = h("div", {});
  const summary = h("p", { class: "muted" });
  fill(view, h("h1", {}, "Live connections"), form, summary, message, list);
  let seen = new Set();
  async function refresh() {
    const data = new FormData(form);
    const params = new URLSearchParams({ limit: "500" });
    if (data.get("customer").trim()) params.set("customer", data.get("customer").trim());
    let answer;
    try {
      answer = await get(`/v1/connections?${params}`);
    } catch (error) {
      fill(list, failure(error));
      return;
    }
    const country = data.get("country").trim().toUpperCase();
    const items = (answer.items || answer.connections || []).filter((c) => !country || (c.country || "").toUpperCase() === country);
    const rows = connectionRows(items, (c) => closeConnection(c, message).then(refresh));
    rows.forEach((row, i) => { if (!seen.has(items[i].id)) row.classList.add("new"); });
    seen = new Set(items.map((c) => c.id));
    summary.textContent = `${fmt.count(items.length)} open · updated every second`;
    fill(list, table(CONNECTION_HEAD, rows, "No live connection right now. Send a request through the proxy and it appears here."));
  }
  return refresh;
}
