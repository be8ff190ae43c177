// The exitpool agent for Java and Kotlin apps: JNA over the SDK's C library
// (agent-ffi, include/exitpool_agent.h). One Agent is one embedded agent;
// every call returns at once, state changes arrive at the StateListener on
// one of the SDK's threads, and a failed call throws AgentException with the
// library's code and message. See docs/sdk.md.
package net.exitpool.agent;

import com.sun.jna.Callback;
import com.sun.jna.Library;
import com.sun.jna.Native;
import com.sun.jna.Pointer;
import com.sun.jna.ptr.PointerByReference;
import java.util.Map;

/** An embedded exitpool agent. Safe to use from several threads; {@link #close} last. */
public final class Agent implements AutoCloseable {
    /** Waiting for the user's consent ({@link #recordConsent}). */
    public static final int STATE_WAITING_FOR_CONSENT = 0;
    /** Connecting to the gateway for the first time. */
    public static final int STATE_CONNECTING = 1;
    /** Joined: the gateway routes customers here. */
    public static final int STATE_JOINED = 2;
    /** Paused by the app. */
    public static final int STATE_PAUSED = 3;
    /** The tunnel was lost; reconnecting by itself. */
    public static final int STATE_RECONNECTING = 4;
    /** Stopped: shut down, consent revoked, or a fatal error (the reason says). */
    public static final int STATE_STOPPED = 5;

    /** Hears each change of state, on one of the SDK's threads; must return quickly. */
    public interface StateListener {
        void onState(int state, String reason);
    }

    /** A failed call: {@code code} is one of the header's EXITPOOL_ERROR_* values. */
    public static final class AgentException extends RuntimeException {
        private static final long serialVersionUID = 1L;
        public final int code;

        AgentException(int code, String message) {
            super("exitpool agent error " + code + ": " + message);
            this.code = code;
        }
    }

    /** The C functions, as JNA binds them. */
    interface Lib extends Library {
        interface StateCallback extends Callback {
            void invoke(Pointer userData, int state, String reason);
        }

        int exitpool_agent_new(String config, StateCallback callback, Pointer userData,
                PointerByReference agentOut, PointerByReference errorOut);
        int exitpool_agent_start(Pointer agent, PointerByReference errorOut);
        int exitpool_agent_pause(Pointer agent, PointerByReference errorOut);
        int exitpool_agent_resume(Pointer agent, PointerByReference errorOut);
        int exitpool_agent_stop(Pointer agent, PointerByReference errorOut);
        int exitpool_agent_set_limits(Pointer agent, String limits, PointerByReference errorOut);
        int exitpool_agent_stats(Pointer agent, PointerByReference statsOut, PointerByReference errorOut);
        int exitpool_agent_consent_record(Pointer agent, String text, PointerByReference consentOut,
                PointerByReference errorOut);
        // C `bool` is one byte.
        int exitpool_agent_consent_revoke(Pointer agent, byte forgetIdentity, PointerByReference errorOut);
        int exitpool_agent_consent_status(Pointer agent, PointerByReference consentOut,
                PointerByReference errorOut);
        void exitpool_agent_free(Pointer agent);
        void exitpool_string_free(Pointer text);
        String exitpool_agent_version();
    }

    private static Lib lib;

    /**
     * The C library, loaded once: from the system property {@code exitpool.agent.lib}, else
     * {@code $EXITPOOL_AGENT_LIB}, else the platform's search for {@code exitpool_agent_ffi}.
     */
    static synchronized Lib library() {
        if (lib == null) {
            String path = System.getProperty("exitpool.agent.lib", System.getenv("EXITPOOL_AGENT_LIB"));
            lib = Native.load(path != null ? path : "exitpool_agent_ffi", Lib.class,
                    Map.of(Library.OPTION_STRING_ENCODING, "UTF-8"));
        }
        return lib;
    }

    /** The C library's version. */
    public static String version() {
        return library().exitpool_agent_version();
    }

    private final Lib native_;
    // Held here: JNA frees a callback whose Java object is collected.
    private final Lib.StateCallback callback;
    // Volatile, not locked: a listener may call in while close() waits for it.
    private volatile Pointer handle;

    /**
     * Makes an agent from its JSON configuration (see exitpool_agent_new in the header); it
     * does nothing until {@link #start}, and connects only after {@link #recordConsent}.
     */
    public Agent(String configJson, StateListener listener) {
        native_ = library();
        callback = (userData, state, reason) -> {
            if (listener != null) {
                try {
                    listener.onState(state, reason);
                } catch (RuntimeException e) {
                    e.printStackTrace(); // never unwind into C
                }
            }
        };
        PointerByReference out = new PointerByReference();
        PointerByReference error = new PointerByReference();
        check(native_.exitpool_agent_new(configJson, callback, null, out, error), error);
        handle = out.getValue();
    }

    private void check(int code, PointerByReference error) {
        if (code != 0) {
            String message = take(error.getValue());
            throw new AgentException(code, message == null ? "" : message);
        }
    }

    /** The library's string as Java text, freed. */
    private String take(Pointer text) {
        if (text == null) {
            return null;
        }
        try {
            return text.getString(0, "UTF-8");
        } finally {
            native_.exitpool_string_free(text);
        }
    }

    private Pointer live() {
        Pointer current = handle;
        if (current == null) {
            throw new AgentException(1, "the agent is closed");
        }
        return current;
    }

    /** Starts sharing (after consent); returns at once. */
    public void start() {
        PointerByReference error = new PointerByReference();
        check(native_.exitpool_agent_start(live(), error), error);
    }

    /** Stops taking new streams; the gateway routes around this device. */
    public void pause() {
        PointerByReference error = new PointerByReference();
        check(native_.exitpool_agent_pause(live(), error), error);
    }

    /** Takes new streams again. */
    public void resume() {
        PointerByReference error = new PointerByReference();
        check(native_.exitpool_agent_resume(live(), error), error);
    }

    /** Stops in the background; STATE_STOPPED follows. */
    public void stop() {
        PointerByReference error = new PointerByReference();
        check(native_.exitpool_agent_stop(live(), error), error);
    }

    /** New limits as JSON: {"max_rate": ..., "quota_bytes": ..., "quota_period": ...}. */
    public void setLimits(String limitsJson) {
        PointerByReference error = new PointerByReference();
        check(native_.exitpool_agent_set_limits(live(), limitsJson, error), error);
    }

    /** The stats as JSON, with "state", "consent" and "report". */
    public String stats() {
        PointerByReference out = new PointerByReference();
        PointerByReference error = new PointerByReference();
        check(native_.exitpool_agent_stats(live(), out, error), error);
        return take(out.getValue());
    }

    /** Records the user's consent ({@code text}: what they agreed to; may be null), as JSON. */
    public String recordConsent(String text) {
        PointerByReference out = new PointerByReference();
        PointerByReference error = new PointerByReference();
        check(native_.exitpool_agent_consent_record(live(), text, out, error), error);
        return take(out.getValue());
    }

    /** Revokes consent: the agent stops at once; optionally forgets its key. */
    public void revokeConsent(boolean forgetIdentity) {
        PointerByReference error = new PointerByReference();
        check(native_.exitpool_agent_consent_revoke(live(), (byte) (forgetIdentity ? 1 : 0), error), error);
    }

    /** The consent recorded as JSON, or "null". */
    public String consent() {
        PointerByReference out = new PointerByReference();
        PointerByReference error = new PointerByReference();
        check(native_.exitpool_agent_consent_status(live(), out, error), error);
        return take(out.getValue());
    }

    /** Releases the agent: no listener call runs after this returns. Not from the listener. */
    @Override
    public synchronized void close() {
        Pointer current = handle;
        if (current != null) {
            handle = null;
            native_.exitpool_agent_free(current);
        }
    }
}
