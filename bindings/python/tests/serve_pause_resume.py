"""The Python wrapper against a real gateway, driven by tests/sdk_python.rs.

The Rust test starts the gateway and a target, runs this script with
EXITPOOL_AGENT_LIB (the C library) and EXITPOOL_TEST_CONFIG (the agent's JSON
configuration), and makes the customer requests itself. They talk in lines:
this script prints what happened (``joined ...``, ``paused``, ...) and waits
for the test's word on standard input before each step. Every wait has a
timeout; any failure exits non-zero with the reason.
"""

import json
import os
import queue
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from exitpool_agent import Agent, AgentError, State  # noqa: E402

WAIT = 20  # seconds, for every state change


def say(line):
    print(line, flush=True)


def expect_word(word):
    line = sys.stdin.readline().strip()
    if line != word:
        sys.exit(f"expected {word!r} from the test, got {line!r}")


def main():
    config = json.loads(os.environ["EXITPOOL_TEST_CONFIG"])

    # Bad input is an error with a code and a message naming the key.
    try:
        Agent(dict(config, colour="blue"))
        sys.exit("a configuration with an unknown key was taken")
    except AgentError as error:
        assert error.code == 2 and "colour" in error.message, error
    say("bad config refused")

    states = queue.Queue()
    agent = Agent(config, on_state=lambda state, reason: states.put((State(state), reason)))

    def wait_for(wanted):
        while True:
            try:
                state, reason = states.get(timeout=WAIT)
            except queue.Empty:
                sys.exit(f"no {wanted.name} within {WAIT} s")
            if state == wanted:
                return reason
            if state == State.STOPPED:
                sys.exit(f"stopped while waiting for {wanted.name}: {reason}")

    assert agent.stats()["state"] == "created"
    agent.start()
    wait_for(State.WAITING_FOR_CONSENT)
    assert agent.consent() is None
    assert agent.stats()["session"] is None, "no tunnel before consent"
    recorded = agent.record_consent("python terms v1")
    assert recorded["text"] == "python terms v1", recorded
    say("joined " + wait_for(State.JOINED))

    expect_word("served")
    stats = agent.stats()
    assert stats["streams_served"] == 1, stats
    assert stats["report"][-1]["streams"] == 1, stats
    assert stats["consent"]["text"] == "python terms v1", stats
    agent.pause()
    wait_for(State.PAUSED)
    assert agent.stats()["paused"] is True
    say("paused")

    expect_word("resume")
    agent.resume()
    wait_for(State.JOINED)
    # New limits restart the agent in the background; it joins again.
    agent.set_limits({"max_rate": 1000000})
    wait_for(State.JOINED)
    assert agent.stats()["max_rate"] == 1000000, agent.stats()
    say("resumed")

    expect_word("stop")
    agent.stop()
    # Stopped comes next, with nothing in between, once usage and the report
    # are saved.
    state, reason = states.get(timeout=WAIT)
    assert state == State.STOPPED, (state, reason)
    say("stopped " + reason)
    try:
        agent.stop()
        sys.exit("a second stop was taken")
    except AgentError as error:
        assert error.code == 5, error

    # Revoking consent (and forgetting the key) while stopped.
    agent.revoke_consent(forget_identity=True)
    assert agent.consent() is None
    assert agent.stats()["state"] == "stopped"
    agent.close()

    # A token the gateway refuses stops the agent with the reason; starting
    # it again tries afresh and stops the same way.
    rejected = Agent(
        dict(config, token="not-the-token", state_dir=os.path.join(config["state_dir"], "rejected")),
        on_state=lambda state, reason: states.put((State(state), reason)),
    )
    rejected.record_consent("python terms v1")
    for _ in range(2):
        rejected.start()
        while True:
            state, reason = states.get(timeout=WAIT)
            if state == State.STOPPED:
                break
        assert "token" in reason, reason
    rejected.close()
    say("done")


if __name__ == "__main__":
    main()
