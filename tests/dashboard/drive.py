"""The operators' dashboard in a real browser (issue 33), driven by tests/dashboard.rs.

Headless Debian Chromium through Playwright (no browser download: the
executable is Debian's). The Rust test starts `gateway --demo` with an admin
token and hands over, in the environment:

  DASHBOARD_SIGNIN  the one-time sign-in link the demo printed
  DASHBOARD_ADMIN   http://HOST:PORT of the admin port
  DASHBOARD_TOKEN   the admin token (for checks made beside the browser)
  DASHBOARD_READONLY  the read-only token
  DASHBOARD_PROXY   HOST:PORT of the customer port
  DASHBOARD_SHOTS   where the screenshots go
  CHROMIUM          the browser to drive (default /usr/bin/chromium)

Every wait has a timeout; the first failed check raises and the exit status is
non-zero. Each step prints one line, so the Rust test shows how far it got.
"""

import http.server
import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

# Germany's code as a whole cell, upper case: Playwright's has_text with a
# string matches any case anywhere, and a hex exit id may hold "de".
GERMANY = re.compile(r"^\s*DE\s*$")

from playwright.sync_api import expect, sync_playwright

SIGNIN = os.environ["DASHBOARD_SIGNIN"]
ADMIN = os.environ["DASHBOARD_ADMIN"].rstrip("/")
TOKEN = os.environ["DASHBOARD_TOKEN"]
READ_ONLY = os.environ["DASHBOARD_READONLY"]
PROXY = os.environ["DASHBOARD_PROXY"]
SHOTS = Path(os.environ["DASHBOARD_SHOTS"])
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
WAIT_MS = 15_000
expect.set_options(timeout=WAIT_MS)


def step(text):
    print(f"dashboard: {text}", flush=True)


def api(method, path, body=None, headers=None):
    """A request to the admin port beside the browser: (status, parsed body)."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"{ADMIN}{path}", data=data, method=method)
    if body is not None:
        request.add_header("Content-Type", "application/json")
    for name, value in (headers or {"Authorization": f"Bearer {TOKEN}"}).items():
        request.add_header(name, value)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            text = response.read().decode()
            status = response.status
    except urllib.error.HTTPError as error:
        text = error.read().decode()
        status = error.code
    try:
        return status, json.loads(text) if text else None
    except json.JSONDecodeError:
        return status, text


def eventually(what, check, timeout=15.0):
    """Polls `check` until it returns a true value, at most `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.2)


class Target(http.server.BaseHTTPRequestHandler):
    """A local target: /small answers 200 KB; /slow drips 2 KB every 100 ms
    for up to 60 s, so a transfer is live while the browser looks at it."""

    protocol_version = "HTTP/1.0"

    def do_GET(self):
        if self.path == "/slow":
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.end_headers()
            deadline = time.monotonic() + 60
            try:
                while time.monotonic() < deadline:
                    self.wfile.write(b"x" * 2000)
                    self.wfile.flush()
                    time.sleep(0.1)
            except OSError:
                pass
            return
        body = b"y" * 200_000
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class Elsewhere(http.server.BaseHTTPRequestHandler):
    """Another origin (another port of the same host: same *site*, so a
    SameSite=Strict cookie alone would not stop it): a page that tries to
    create a customer through the signed-in dashboard, by fetch and by form."""

    def do_GET(self):
        if self.path == "/form":
            # A form posting text/plain that reads as JSON, sent at once.
            page = f"""<!doctype html><html><body>
<form id="f" method="POST" action="{ADMIN}/dashboard/api/v1/customers" enctype="text/plain">
<input name='{{"name":"evilform","x":"' value='"}}'></form>
<script>document.getElementById("f").submit();</script></body></html>"""
        else:
            page = f"""<!doctype html><html><body><script>
fetch("{ADMIN}/dashboard/api/v1/customers", {{method: "POST", credentials: "include", mode: "no-cors",
  headers: {{"Content-Type": "text/plain"}}, body: JSON.stringify({{name: "evilfetch"}})}})
  .then(() => {{ document.title = "fetched"; }}, () => {{ document.title = "fetched"; }});
</script></body></html>"""
        page = page.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(page)))
        self.end_headers()
        self.wfile.write(page)

    def log_message(self, *args):
        pass


def serve(handler):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def curl(user, password, url, *extra):
    return subprocess.Popen(
        ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "60",
         "-x", f"http://{user}:{password}@{PROXY}", *extra, url],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def shot(page, name):
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)
    step(f"screenshot {SHOTS / (name + '.png')}")


def wait_js(page, what, expression):
    """Polls `expression` in the page until it is true. (Playwright's own
    wait_for_function polls with eval, which the dashboard's CSP forbids, as
    it should; page.evaluate goes through the debugging protocol.)"""
    eventually(what, lambda: page.evaluate(expression), timeout=WAIT_MS / 1000)


def loaded(page, name):
    """Waits until the router has finished a refresh of page `name`."""
    wait_js(page, f"the {name} page", f"document.body.dataset.loaded === '{name}'")


def goto(page, hash_, name):
    page.evaluate("document.body.dataset.loaded = ''")
    page.goto(f"{ADMIN}/dashboard/#{hash_}")
    loaded(page, name)


def main():
    target = serve(Target)
    target_url = f"http://127.0.0.1:{target.server_address[1]}"
    elsewhere = serve(Elsewhere)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                    args=["--no-sandbox", "--disable-dev-shm-usage"])
        context = browser.new_context(viewport={"width": 1400, "height": 900})
        context.set_default_timeout(WAIT_MS)
        page = context.new_page()
        page.on("dialog", lambda dialog: dialog.accept())
        outside = []
        page.on("request", lambda r: outside.append(r.url) if not r.url.startswith(ADMIN) else None)

        # Sign in with the demo's one-time link; a second use is refused.
        page.goto(SIGNIN)
        expect(page).to_have_url(f"{ADMIN}/dashboard/")
        loaded(page, "overview")
        expect(page.locator("#role")).to_have_text("admin")
        status, _ = api("GET", SIGNIN[len(ADMIN):], headers={})
        assert status == 401, f"a used one-time link answered {status}"
        step("signed in with the one-time link; it does not work twice")

        # Overview: the demo's three countries.
        bars = page.locator("section[data-card='Agents online by country']").locator(".bar-label")
        expect(bars).to_have_count(3)
        assert sorted(bars.all_inner_texts()) == ["DE", "JP", "US"], bars.all_inner_texts()
        expect(page.locator("section[data-card='Fleet and database']")).to_contain_text("Database: SQLite")
        step("the overview shows the demo's three countries and its SQLite store")

        # Create a customer in the UI; its password is shown once.
        goto(page, "/customers", "customers")
        form = page.locator("form.inline-form")
        form.locator("input[name=name]").fill("acme")
        form.locator("input[name=quota_daily]").fill("5")
        form.locator("input[name=quota_monthly]").fill("50")
        form.locator("button[type=submit]").click()
        secret = page.locator(".once code.secret")
        expect(secret).to_be_visible()
        password = secret.inner_text().strip()
        assert len(password) >= 12, password
        expect(page.locator("table a", has_text="acme")).to_be_visible()
        step("created customer acme in the UI")

        # Requests through the proxy with its credentials (in force within a second or so).
        def request_ok():
            done = curl("acme", password, f"{target_url}/small")
            out, err = done.communicate(timeout=30)
            return out == "200"
        eventually("acme's credentials to work through the proxy", request_ok, timeout=10)
        for _ in range(3):
            done = curl("acme", password, f"{target_url}/small")
            out, _ = done.communicate(timeout=30)
            assert out == "200", out
        slow = curl("acme", password, f"{target_url}/slow")
        step("acme's requests went through the proxy; a slow transfer is running")

        # Its page: usage and the live connection appear.
        page.goto(f"{ADMIN}/dashboard/#/customers/acme")
        loaded(page, "customer")
        live_rows = page.locator("section[data-card='Live connections']").locator("tbody tr")
        expect(live_rows).to_have_count(1, timeout=WAIT_MS)
        expect(live_rows.first).to_contain_text("acme")
        hourly = page.locator("section[data-card^='Last 24 hours']").locator("rect.column")
        expect(hourly.first).to_be_attached(timeout=WAIT_MS)
        today = page.locator(".quota-text").first
        wait_js(page, "acme's usage today",
                "(() => { const t = document.querySelector('.quota-text'); return t && !t.textContent.startsWith('0 B'); })()")
        step(f"acme's usage ({today.inner_text()}) and live connection appear")
        shot(page, "customer")

        goto(page, "/live", "live")
        expect(page.locator("tbody tr", has_text="acme")).to_have_count(1)
        shot(page, "live")

        # Close it from the UI: curl's transfer ends.
        started = time.monotonic()
        page.locator("tbody tr", has_text="acme").locator("button", has_text="Close").click()
        try:
            out, err = slow.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            slow.kill()
            raise AssertionError("curl's transfer went on after the connection was closed")
        assert slow.returncode != 0, f"curl finished normally ({out}) instead of being cut"
        step(f"closed from the UI: curl ended after {time.monotonic() - started:.1f} s ({err.strip()})")

        # The customer's page changes its limits, its password and its sub-users.
        page.goto(f"{ADMIN}/dashboard/#/customers/acme")
        loaded(page, "customer")
        limits = page.locator("section[data-card='Limits']").locator("form")
        limits.locator("input[name=max_connections]").fill("7")
        limits.locator("button[type=submit]").click()
        expect(page.locator("p.ok", has_text="Limits saved")).to_be_visible()
        status, account = api("GET", "/api/v1/customers/acme")
        assert status == 200 and account["limits"]["max_connections"] == 7, account
        assert account["limits"]["quota_daily"] == 5_000_000_000, account
        page.locator("button", has_text="Rotate password").click()
        rotated = page.locator(".once code.secret")
        expect(rotated).to_be_visible()
        new_password = rotated.inner_text().strip()
        assert new_password != password

        def answers(user, secret, code):
            done = curl(user, secret, f"{target_url}/small")
            out, _ = done.communicate(timeout=30)
            return out == code
        eventually("the new password to work", lambda: answers("acme", new_password, "200"), timeout=10)
        assert answers("acme", password, "407"), "the old password still works"
        subs = page.locator("section[data-card='Sub-users']")
        subs.locator("input[name=sub]").fill("team1")
        subs.locator("button[type=submit]").click()
        sub_secret = page.locator(".once", has_text="team1.acme").locator("code.secret")
        expect(sub_secret).to_be_visible()
        expect(subs.locator("tbody tr", has_text="team1")).to_have_count(1)
        sub_password = sub_secret.inner_text().strip()
        eventually("the sub-user's password to work",
                   lambda: answers("team1.acme", sub_password, "200"), timeout=10)
        step("limits saved, the password rotated (shown once, the old one refused), a sub-user added")

        # Agent tokens: created, its secret shown once.
        goto(page, "/tokens", "tokens")
        page.locator("input[name=label]").fill("volunteers")
        page.locator("form.inline-form button[type=submit]").click()
        expect(page.locator(".once code.secret")).to_be_visible()
        expect(page.locator("tbody tr", has_text="volunteers")).to_have_count(1)
        shot(page, "tokens")
        step("created an agent token")

        # Overview and exits, then ban an exit: it leaves the pool.
        goto(page, "/overview", "overview")
        shot(page, "overview")
        goto(page, "/exits", "exits")
        rows = page.locator("tbody tr").filter(has=page.locator("td", has_text=GERMANY))
        expect(page.locator("table").first.locator("tbody tr")).to_have_count(3)
        shot(page, "exits")
        exit_id = rows.first.locator("td").first.inner_text().strip()
        goto(page, f"/exits/{exit_id}", "exit")
        expect(page.locator(".stat-value", has_text=GERMANY)).to_be_visible()
        shot(page, "exit")
        goto(page, "/exits", "exits")
        rows = page.locator("tbody tr").filter(has=page.locator("td", has_text=GERMANY))
        rows.first.locator("button", has_text="Ban").click()
        expect(page.locator("p.ok", has_text="banned")).to_be_visible()
        def left_pool():
            status, stats = api("GET", "/stats")
            return status == 200 and "DE" not in stats["countries"] and stats["agents"] == 2
        eventually("the banned exit to leave the pool", left_pool)
        goto(page, "/exits", "exits")
        expect(page.locator("table").first.locator("tbody tr")).to_have_count(2)
        step(f"banned exit {exit_id}: it left the pool")

        # Another origin cannot change anything, with the browser signed in.
        cookie = next(c for c in context.cookies() if c["name"] == "exitpool_session")
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict", cookie
        other = context.new_page()
        other.goto(f"http://127.0.0.1:{elsewhere.server_address[1]}/fetch")
        wait_js(other, "the other origin's fetch", "document.title === 'fetched'")
        other.goto(f"http://127.0.0.1:{elsewhere.server_address[1]}/form")
        other.wait_for_url(f"{ADMIN}/dashboard/api/v1/customers")
        refusal = other.locator("body").inner_text()
        assert "other_origin" in refusal, refusal
        other.close()
        for name in ["evilfetch", "evilform"]:
            status, _ = api("GET", f"/api/v1/customers/{name}")
            assert status == 404, f"the other origin's request created {name} ({status})"
        # The same write with the session cookie and even the CSRF token, from
        # another origin, is refused by the origin check.
        status, session = api("GET", "/dashboard/api/session", headers={"Cookie": f"exitpool_session={cookie['value']}"})
        assert status == 200, status
        status, answer = api("POST", "/dashboard/api/v1/customers", {"name": "evilcsrf"}, headers={
            "Cookie": f"exitpool_session={cookie['value']}", "X-CSRF-Token": session["csrf"],
            "Origin": f"http://127.0.0.1:{elsewhere.server_address[1]}"})
        assert status == 403, (status, answer)
        status, answer = api("POST", "/dashboard/api/v1/customers", {"name": "evilcsrf"}, headers={
            "Cookie": f"exitpool_session={cookie['value']}"})
        assert status == 403 and answer["error"] == "csrf", (status, answer)
        status, _ = api("GET", "/api/v1/customers/evilcsrf")
        assert status == 404, status
        step("a page on another origin could not create a customer (fetch, form, forged headers)")

        # Sign out: the pages and the old session are refused.
        page.locator("#signout").click()
        expect(page).to_have_url(f"{ADMIN}/dashboard/signin")
        page.goto(f"{ADMIN}/dashboard/")
        expect(page).to_have_url(f"{ADMIN}/dashboard/signin")
        status, _ = api("GET", "/dashboard/api/overview", headers={"Cookie": f"exitpool_session={cookie['value']}"})
        assert status == 401, status
        shot(page, "signin")
        step("signed out: the dashboard and the old session are refused")

        # Sign in again with the token on the form.
        page.locator("#token").fill("wrong")
        page.locator("button[type=submit]").click()
        expect(page.locator("#error")).not_to_be_empty()
        page.locator("#token").fill(TOKEN)
        page.locator("button[type=submit]").click()
        expect(page).to_have_url(f"{ADMIN}/dashboard/")
        loaded(page, "overview")
        step("a wrong token is refused; the admin token signs in")

        # A read-only session sees everything and can change nothing.
        page.locator("#signout").click()
        expect(page).to_have_url(f"{ADMIN}/dashboard/signin")
        page.locator("#token").fill(READ_ONLY)
        page.locator("button[type=submit]").click()
        expect(page).to_have_url(f"{ADMIN}/dashboard/")
        loaded(page, "overview")
        expect(page.locator("#role")).to_have_text("read-only")
        goto(page, "/customers", "customers")
        expect(page.locator("table a", has_text="acme")).to_be_visible()
        expect(page.locator("form")).to_have_count(0)
        goto(page, "/customers/acme", "customer")
        expect(page.locator("button", has_text="Rotate password")).to_have_count(0)
        expect(page.locator("button", has_text="Save limits")).to_have_count(0)
        goto(page, "/exits", "exits")
        expect(page.locator("button", has_text="Ban")).to_have_count(0)
        shot(page, "read-only")
        cookie = next(c for c in context.cookies() if c["name"] == "exitpool_session")
        status, session = api("GET", "/dashboard/api/session", headers={"Cookie": f"exitpool_session={cookie['value']}"})
        assert status == 200 and session["role"] == "read-only", (status, session)
        status, answer = api("POST", "/dashboard/api/v1/customers", {"name": "ro"}, headers={
            "Cookie": f"exitpool_session={cookie['value']}", "X-CSRF-Token": session["csrf"]})
        assert status == 403 and answer["error"] == "read_only", (status, answer)
        status, _ = api("GET", "/api/v1/customers/ro")
        assert status == 404, status
        step("the read-only token signs in: no write control shown, a forged write refused")

        assert not outside, f"requests left for other origins: {outside}"
        browser.close()
    step("all checks passed")


if __name__ == "__main__":
    try:
        main()
    except Exception as error:  # noqa: BLE001 - any failure is the test's failure
        print(f"dashboard: FAILED: {error!r}", file=sys.stderr, flush=True)
        sys.exit(1)
