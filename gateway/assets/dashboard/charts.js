// Small charts drawn here, as HTML and SVG (no library, nothing fetched):
// ranked bars, a time-series line chart, column charts and quota bars.
// Sizes are set through the CSSOM, which the page's CSP allows.
const SVG = "http://www.w3.org/2000/svg";

function el(tag, attrs = {}, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, value);
  if (text !== undefined) node.textContent = text;
  return node;
}

/** Horizontal bars, largest first: rows are {label, value, note?}. */
export function rankedBars(rows, format = String) {
  const list = document.createElement("ol");
  list.className = "bars";
  const max = Math.max(1, ...rows.map((row) => row.value));
  for (const row of rows) {
    const item = document.createElement("li");
    const label = document.createElement("span");
    label.className = "bar-label";
    label.textContent = row.label;
    const track = document.createElement("span");
    track.className = "bar-track";
    const fill = document.createElement("span");
    fill.className = `bar-fill ${row.cls || ""}`;
    fill.style.width = `${(100 * row.value) / max}%`;
    track.append(fill);
    const value = document.createElement("span");
    value.className = "bar-value";
    value.textContent = format(row.value);
    item.append(label, track, value);
    if (row.note) item.title = row.note;
    list.append(item);
  }
  return list;
}

/** Used against a quota: a bar that turns amber at 80 % and red at 100 %. */
export function quotaBar(used, quota, format) {
  const wrap = document.createElement("div");
  wrap.className = "quota";
  const track = document.createElement("div");
  track.className = "quota-track";
  const fill = document.createElement("div");
  const share = quota ? used / quota : 0;
  fill.className = `quota-fill ${share >= 1 ? "over" : share >= 0.8 ? "near" : ""}`;
  fill.style.width = `${Math.min(100, 100 * share)}%`;
  track.append(fill);
  const text = document.createElement("div");
  text.className = "quota-text";
  const shown = share > 0 && share < 0.01 ? "<1" : Math.round(100 * share);
  text.textContent = quota ? `${format(used)} of ${format(quota)} (${shown} %)` : `${format(used)} · no quota`;
  wrap.append(track, text);
  return wrap;
}

const W = 480;
const H = 170;
const PAD = { left: 62, right: 10, top: 10, bottom: 22 };

function frame(max, format, ticks) {
  const svg = el("svg", { viewBox: `0 0 ${W} ${H}`, class: "chart", role: "img" });
  const plotH = H - PAD.top - PAD.bottom;
  for (let i = 0; i <= 2; i++) {
    const y = PAD.top + plotH * (1 - i / 2);
    svg.append(el("line", { x1: PAD.left, x2: W - PAD.right, y1: y, y2: y, class: "grid" }));
    svg.append(el("text", { x: PAD.left - 6, y: y + 4, class: "axis", "text-anchor": "end" }, format((max * i) / 2)));
  }
  ticks.forEach(([x, label], i) => {
    // The outer labels keep inside the frame.
    const anchor = i === 0 ? "start" : i === ticks.length - 1 ? "end" : "middle";
    const at = i === 0 ? Math.max(x, PAD.left) : i === ticks.length - 1 ? Math.min(x, W - PAD.right) : x;
    svg.append(el("text", { x: at, y: H - 6, class: "axis", "text-anchor": anchor }, label));
  });
  return svg;
}

/**
 * Lines over time. series: [{name, cls, points: [[unixSeconds, value]]}].
 * Empty series draw an empty frame with `empty` as its message.
 */
export function lineChart(series, { format = String, label = (t) => t, empty = "No data yet." } = {}) {
  const all = series.flatMap((s) => s.points);
  const wrap = document.createElement("figure");
  wrap.className = "chart-wrap";
  const t0 = Math.min(...all.map((p) => p[0]));
  const t1 = Math.max(...all.map((p) => p[0]));
  if (all.length < 2 || t0 === t1) {
    const p = document.createElement("p");
    p.className = "empty";
    p.textContent = empty;
    wrap.append(p);
    return wrap;
  }
  const max = Math.max(1, ...all.map((p) => p[1])) * 1.1;
  const x = (t) => PAD.left + ((t - t0) / Math.max(1, t1 - t0)) * (W - PAD.left - PAD.right);
  const y = (v) => PAD.top + (1 - v / max) * (H - PAD.top - PAD.bottom);
  const ticks = [0, 0.5, 1].map((f) => {
    const t = t0 + f * (t1 - t0);
    return [x(t), label(t)];
  });
  const svg = frame(max, format, ticks);
  for (const s of series) {
    if (s.points.length === 0) continue;
    const d = s.points.map(([t, v], i) => `${i ? "L" : "M"}${x(t).toFixed(1)},${y(v).toFixed(1)}`).join("");
    const path = el("path", { d, class: `line ${s.cls || ""}` });
    path.append(el("title", {}, s.name));
    svg.append(path);
  }
  const legend = document.createElement("figcaption");
  legend.className = "legend";
  for (const s of series) {
    const last = s.points.length ? s.points[s.points.length - 1][1] : 0;
    const key = document.createElement("span");
    key.className = `key ${s.cls || ""}`;
    key.textContent = `${s.name}: ${format(last)}`;
    legend.append(key);
  }
  wrap.append(svg, legend);
  return wrap;
}

/** Columns, one per bucket: [{label, value, title}]. */
export function columns(buckets, { format = String, empty = "No data yet." } = {}) {
  const wrap = document.createElement("figure");
  wrap.className = "chart-wrap";
  if (buckets.length === 0 || buckets.every((b) => !b.value)) {
    const p = document.createElement("p");
    p.className = "empty";
    p.textContent = empty;
    wrap.append(p);
    return wrap;
  }
  const max = Math.max(1, ...buckets.map((b) => b.value)) * 1.1;
  const plotW = W - PAD.left - PAD.right;
  const step = plotW / buckets.length;
  const ticks = [0, Math.floor(buckets.length / 2), buckets.length - 1].map((i) => [PAD.left + step * (i + 0.5), buckets[i].label]);
  const svg = frame(max, format, ticks);
  const plotH = H - PAD.top - PAD.bottom;
  buckets.forEach((bucket, i) => {
    const h = (bucket.value / max) * plotH;
    const rect = el("rect", {
      x: (PAD.left + step * i + step * 0.1).toFixed(1),
      y: (PAD.top + plotH - h).toFixed(1),
      width: Math.max(1, step * 0.8).toFixed(1),
      height: h.toFixed(1),
      class: "column",
    });
    rect.append(el("title", {}, bucket.title || `${bucket.label}: ${format(bucket.value)}`));
    svg.append(rect);
  });
  wrap.append(svg);
  return wrap;
}
