# Measures an embedded agent idling inside a Python host, for docs/sdk.md
# ("Size and cost"): RSS before the library is loaded, after loading, once the
# agent joined a local gateway (target/debug/gateway), and CPU over an idle
# minute. Not a test; run by hand against a release build of the library:
#   python3 agent-ffi/scripts/measure_idle.py target/release/libexitpool_agent_ffi.so [SECONDS]
import json, os, subprocess, sys, tempfile, threading, time
ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
sys.path.insert(0, os.path.join(ROOT, "bindings/python"))
from exitpool_agent import Agent, State, load_library

def rss_kib():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])

def cpu_ticks():
    fields = open("/proc/self/stat").read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime

lib_path = sys.argv[1]
idle_secs = int(sys.argv[2]) if len(sys.argv) > 2 else 60
state = tempfile.mkdtemp()
gw_state = tempfile.mkdtemp()
token = "measure-token-0123456789abcdef0123456789"
gateway = subprocess.Popen(
    [os.path.join(ROOT, "target/debug/gateway"), "--state-dir", gw_state, "--listen", "127.0.0.1:0",
     "--tunnel", "127.0.0.1:0", "--admin", "127.0.0.1:0", "--agent-token", token,
     "--user", "alice:s3cretlongpasswordformeasure"],
    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
banner = None
deadline = time.time() + 30
while time.time() < deadline:
    line = gateway.stdout.readline()
    if not line:
        break
    if line.startswith("gateway: customers on"):
        banner = line.split()
        break
if banner is None:
    sys.exit("gateway did not start")
threading.Thread(target=lambda: [None for _ in gateway.stdout], daemon=True).start()
tunnel, pin = banner[6], banner[9]

before_load = rss_kib()
load_library(lib_path)
after_load = rss_kib()
joined = threading.Event()
agent = Agent({"gateways": [tunnel], "pin": pin, "token": token, "state_dir": state,
               "bind": "127.0.0.2", "transport": "quic"},
              on_state=lambda s, r: joined.set() if s == State.JOINED else None)
agent.start()
agent.record_consent("measure")
if not joined.wait(30):
    sys.exit("agent did not join: " + json.dumps(agent.stats()))
after_joined = rss_kib()
ticks = cpu_ticks()
start = time.time()
time.sleep(idle_secs)  # the measurement itself: an idle minute
elapsed = time.time() - start
ticks = cpu_ticks() - ticks
after_idle = rss_kib()
hz = os.sysconf("SC_CLK_TCK")
print(json.dumps({
    "rss_kib_before_load": before_load, "rss_kib_after_load": after_load,
    "rss_kib_after_joined": after_joined, "rss_kib_after_idle": after_idle,
    "agent_rss_kib_joined_minus_before_load": after_joined - before_load,
    "agent_rss_kib_idle_minus_before_load": after_idle - before_load,
    "idle_secs": round(elapsed, 1), "cpu_secs": ticks / hz,
    "cpu_percent": round(100 * ticks / hz / elapsed, 3),
    "state": agent.stats()["state"],
}))
agent.stop(); time.sleep(0.5); agent.close()
gateway.terminate(); gateway.wait(10)
