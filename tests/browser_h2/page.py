"""A page fetching many URLs at once through the HTTPS proxy port, in headless
Chromium over HTTP/2 (issue 35), driven by tests/h2_proxy.rs.

Debian's Chromium through Playwright (no browser download). The Rust test
starts the gateway (TLS on its customer port, alice allowed from 127.0.0.1),
an agent, the page's server and the sites the page fetches from, and hands
over, in the environment:

  H2_PROXY      HOST:PORT of the HTTPS proxy port
  H2_SPKI       base64 SHA-256 of the proxy certificate's public key (Chromium
                trusts that key, and only it, for the proxy)
  H2_PAGE       the page's URL; it fetches every URL it lists at once and sets
                window.results to [{url, status, text} or {url, error}]
  H2_EXPECTED   how many results the page must report
  H2_WARM       a small page loaded first, so Chromium has its HTTP/2 session
                to the proxy before the measured page (its first connections
                to a proxy it has not seen speak HTTP/2 race each other)
  H2_METRICS    the gateway's /metrics URL, read before and after the page
  CHROMIUM      the browser to drive (default /usr/bin/chromium)

Every wait has a timeout. Prints one line per step and, last, the results as
one JSON line; exits non-zero when a check fails.
"""

import json
import os
import sys
import urllib.request

from playwright.sync_api import sync_playwright

PROXY = os.environ["H2_PROXY"]
SPKI = os.environ["H2_SPKI"]
PAGE = os.environ["H2_PAGE"]
EXPECTED = int(os.environ["H2_EXPECTED"])
WARM = os.environ["H2_WARM"]
METRICS = os.environ["H2_METRICS"]
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
WAIT_MS = 40_000


def step(text):
    print(f"browser_h2: {text}", flush=True)


def counters():
    """The gateway's TLS connection and HTTP/2 stream counters, read directly."""
    with urllib.request.urlopen(METRICS, timeout=10) as response:
        text = response.read().decode()
    wanted = {
        "exitpool_customer_tls_connections_total": "tls_connections",
        "exitpool_customer_h2_streams_total": "h2_streams",
    }
    found = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in wanted:
            found[wanted[name]] = int(float(value))
    if len(found) != len(wanted):
        sys.exit(f"counters missing from {METRICS}: {found}")
    return found


def main():
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=[
                f"--proxy-server=https://{PROXY}",
                # Chromium sends loopback targets around any proxy unless told not to.
                "--proxy-bypass-list=<-loopback>",
                # Trusts the proxy's key only (unlike --ignore-certificate-errors).
                f"--ignore-certificate-errors-spki-list={SPKI}",
                "--disable-quic",
                "--disable-background-networking",
            ],
        )
        try:
            page = browser.new_page()
            page.set_default_timeout(WAIT_MS)
            step(f"warming up with {WARM} through https://{PROXY}")
            page.goto(WARM, timeout=WAIT_MS)
            warm = counters()
            step(f"after the warm-up: {warm}")
            step(f"loading {PAGE}")
            page.goto(PAGE, timeout=WAIT_MS)
            page.wait_for_function(
                "window.results !== undefined", timeout=WAIT_MS
            )
            results = page.evaluate("window.results")
            after = counters()
            step(f"after the page: {after}")
        finally:
            browser.close()
    failed = [r for r in results if r.get("status") != 200 or r.get("text") != "together"]
    step(f"{len(results)} results, {len(failed)} failed")
    print(
        json.dumps(
            {
                "results": results,
                "warm": warm,
                "page": {key: after[key] - warm[key] for key in after},
            }
        ),
        flush=True,
    )
    if len(results) != EXPECTED:
        sys.exit(f"expected {EXPECTED} results, got {len(results)}")
    if failed:
        sys.exit(f"failed fetches: {failed[:5]}")
    step("all fetches answered, all in flight together")


if __name__ == "__main__":
    main()
