// The Java wrapper against a real gateway, driven by tests/sdk_java.rs, as
// bindings/python/tests/serve_pause_resume.py is by tests/sdk_python.rs: the
// Rust test starts the gateway and makes the customer requests; this program
// drives the agent (configuration in EXITPOOL_TEST_CONFIG, library in
// EXITPOOL_AGENT_LIB), prints what happened and waits for the test's word on
// standard input before each step. Every wait has a timeout; a failure exits
// non-zero with the reason.

import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.util.concurrent.LinkedBlockingQueue;
import java.util.concurrent.TimeUnit;
import net.exitpool.agent.Agent;

public final class ServePauseResume {
    private static final int WAIT_SECONDS = 20;

    private record Change(int state, String reason) {}

    private static final LinkedBlockingQueue<Change> changes = new LinkedBlockingQueue<>();
    private static final BufferedReader stdin = new BufferedReader(new InputStreamReader(System.in));

    private static void fail(String why) {
        System.err.println("ServePauseResume: " + why);
        System.exit(1);
    }

    private static void check(boolean ok, String why) {
        if (!ok) fail(why);
    }

    private static String waitFor(int wanted) throws InterruptedException {
        while (true) {
            Change change = changes.poll(WAIT_SECONDS, TimeUnit.SECONDS);
            if (change == null) fail("no state " + wanted + " within " + WAIT_SECONDS + " s");
            if (change.state == wanted) return change.reason;
            if (change.state == Agent.STATE_STOPPED) fail("stopped while waiting for " + wanted + ": " + change.reason);
        }
    }

    private static void expectWord(String word) throws java.io.IOException {
        String line = stdin.readLine();
        check(word.equals(line), "expected " + word + " from the test, got " + line);
    }

    public static void main(String[] args) throws Exception {
        String config = System.getenv("EXITPOOL_TEST_CONFIG");
        System.out.println("library " + Agent.version());

        // Bad input is an exception with a code and a message naming the key.
        try {
            new Agent(config.replaceFirst("\\{", "{\"colour\":\"blue\","), null);
            fail("a configuration with an unknown key was taken");
        } catch (Agent.AgentException e) {
            check(e.code == 2 && e.getMessage().contains("colour"), e.getMessage());
        }
        System.out.println("bad config refused");

        Agent agent = new Agent(config, (state, reason) -> changes.add(new Change(state, reason)));
        check(agent.stats().contains("\"state\":\"created\""), agent.stats());
        agent.start();
        waitFor(Agent.STATE_WAITING_FOR_CONSENT);
        check(agent.consent().equals("null"), agent.consent());
        String recorded = agent.recordConsent("java terms v1");
        check(recorded.contains("\"text\":\"java terms v1\""), recorded);
        System.out.println("joined " + waitFor(Agent.STATE_JOINED));

        expectWord("served");
        String stats = agent.stats();
        check(stats.contains("\"streams_served\":1"), stats);
        agent.pause();
        waitFor(Agent.STATE_PAUSED);
        check(agent.stats().contains("\"paused\":true"), agent.stats());
        System.out.println("paused");

        expectWord("resume");
        agent.resume();
        waitFor(Agent.STATE_JOINED);
        System.out.println("resumed");

        expectWord("stop");
        agent.stop();
        System.out.println("stopped " + waitFor(Agent.STATE_STOPPED));
        try {
            agent.stop();
            fail("a second stop was taken");
        } catch (Agent.AgentException e) {
            check(e.code == 5, e.getMessage());
        }
        agent.revokeConsent(true);
        check(agent.consent().equals("null"), agent.consent());
        agent.close();
        System.out.println("done");
        System.exit(0);
    }
}
