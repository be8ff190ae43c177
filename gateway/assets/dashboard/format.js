// Numbers and times for people: bytes in KB/MB/GB, rates, percentages,
// "3 min ago", times in the browser's zone with UTC on hover.
const UNITS = ["B", "KB", "MB", "GB", "TB", "PB"];

export function bytes(n) {
  if (n === null || n === undefined || Number.isNaN(n)) return "–";
  let value = Number(n);
  let unit = 0;
  while (Math.abs(value) >= 1000 && unit < UNITS.length - 1) {
    value /= 1000;
    unit += 1;
  }
  const digits = unit === 0 || value >= 100 ? 0 : value >= 10 ? 1 : 2;
  return `${value.toFixed(digits)} ${UNITS[unit]}`;
}

export const rate = (perSecond) => `${bytes(perSecond)}/s`;

export function percent(part, whole) {
  if (!whole) return "–";
  const p = (100 * part) / whole;
  if (p === 0 || p === 100) return `${p} %`;
  return `${p < 10 ? p.toFixed(1) : Math.round(p)} %`;
}

export const count = (n) => (n === null || n === undefined ? "–" : Number(n).toLocaleString());

export function duration(seconds) {
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
  return `${Math.floor(s / 86400)} d ${Math.floor((s % 86400) / 3600)} h`;
}

export function ago(date) {
  const seconds = (Date.now() - date.getTime()) / 1000;
  if (seconds < 5) return "just now";
  return `${duration(seconds)} ago`;
}

const toDate = (when) => (when instanceof Date ? when : typeof when === "number" ? new Date(when * 1000) : new Date(when));

/** A <time> element: local time (or "… ago"), UTC on hover. */
export function time(when, { relative = false } = {}) {
  const date = toDate(when);
  const element = document.createElement("time");
  if (Number.isNaN(date.getTime())) {
    element.textContent = "–";
    return element;
  }
  element.dateTime = date.toISOString();
  element.title = `${date.toISOString().replace("T", " ").replace(/\.\d+Z$/, " UTC")}`;
  element.textContent = relative ? ago(date) : date.toLocaleString();
  return element;
}

/** A time of day; with seconds when a chart spans only minutes. */
export const clock = (when, seconds = false) =>
  toDate(when).toLocaleTimeString([], seconds ? { hour: "2-digit", minute: "2-digit", second: "2-digit" } : { hour: "2-digit", minute: "2-digit" });
