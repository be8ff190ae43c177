// The dashboard's router: #/overview, #/exits[/ID], #/customers[/NAME],
// #/tokens, #/live. Each page refreshes on its own period; a failed refresh
// shows in the footer and the next one tries again.
import { loadSession, signOut, canWrite } from "./api.js";
import * as pages from "./pages.js";

const view = document.getElementById("view");
const status = document.getElementById("status");
// Seconds between refreshes, by page.
const PERIOD = { overview: 5, exits: 10, exit: 10, customers: 15, customer: 5, tokens: 30, live: 1 };
let timer = null;
let generation = 0;

function route() {
  const [page, ...rest] = location.hash.replace(/^#\/?/, "").split("/");
  const arg = rest.length ? decodeURIComponent(rest.join("/")) : null;
  switch (page) {
    case "exits": return arg ? ["exit", pages.exit(view, arg)] : ["exits", pages.exits(view)];
    case "customers": return arg ? ["customer", pages.customer(view, arg)] : ["customers", pages.customers(view)];
    case "tokens": return ["tokens", pages.tokens(view)];
    case "live": return ["live", pages.live(view)];
    default: return ["overview", pages.overview(view)];
  }
}

async function show() {
  clearTimeout(timer);
  const mine = ++generation;
  const [name, refresh] = route();
  document.body.dataset.page = name;
  for (const link of document.querySelectorAll("#nav a")) {
    link.classList.toggle("current", name.startsWith(link.dataset.page.replace(/s$/, "")));
  }
  const tick = async () => {
    if (mine !== generation) return;
    try {
      await refresh();
      status.textContent = `Updated ${new Date().toLocaleTimeString()}`;
      status.classList.remove("error");
      document.body.dataset.loaded = name;
    } catch (error) {
      status.textContent = `Refresh failed: ${error.message}`;
      status.classList.add("error");
    }
    if (mine === generation) timer = setTimeout(tick, PERIOD[name] * 1000);
  };
  await tick();
}

async function start() {
  const session = await loadSession();
  document.getElementById("role").textContent = session.role;
  document.body.classList.toggle("read-only", !canWrite());
  document.getElementById("signout").addEventListener("click", async () => {
    await signOut().catch(() => {});
    location.assign("/dashboard/signin");
  });
  window.addEventListener("hashchange", show);
  await show();
}

start().catch((error) => {
  view.textContent = `The dashboard could not start: ${error.message}`;
});
