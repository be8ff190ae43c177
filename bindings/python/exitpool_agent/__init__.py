"""The exitpool agent for Python apps: ctypes over the SDK's C library.

The library (``libexitpool_agent_ffi.so``, built by ``cargo build -p
exitpool-agent-ffi``) is found at ``$EXITPOOL_AGENT_LIB`` if set, else by the
system's search (``ctypes.util.find_library``). Every call returns at once;
state changes come to the ``on_state`` callback (on one of the SDK's threads)
and show in :meth:`Agent.stats`. A failed call raises :class:`AgentError`
with the library's code and message. See docs/sdk.md.

    agent = Agent({"gateways": ["gw.example.net:4433"], "pin": "sha256:...",
                   "token": "...", "state_dir": "/var/lib/myapp/exitpool"},
                  on_state=lambda state, reason: print(State(state).name, reason))
    agent.start()                        # waits for consent, does not connect
    agent.record_consent("terms v3")     # the user agreed: it connects
    print(agent.stats()["report"])       # what was shared, per day
    agent.stop(); agent.close()
"""

import ctypes
import ctypes.util
import enum
import json
import os
import threading

__all__ = ["Agent", "AgentError", "State", "load_library"]


class State(enum.IntEnum):
    """The agent's states (``EXITPOOL_STATE_*`` in the C header)."""

    WAITING_FOR_CONSENT = 0
    CONNECTING = 1
    JOINED = 2
    PAUSED = 3
    RECONNECTING = 4
    STOPPED = 5
    CREATED = 6


class AgentError(Exception):
    """A failed call: ``code`` is one of the header's ``EXITPOOL_ERROR_*``."""

    def __init__(self, code, message):
        super().__init__(f"exitpool agent error {code}: {message}")
        self.code = code
        self.message = message


_CALLBACK = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int32, ctypes.c_char_p)
_OUT = ctypes.POINTER(ctypes.c_void_p)
_library = None
_library_lock = threading.Lock()


def load_library(path=None):
    """Loads the C library once (from ``path``, ``$EXITPOOL_AGENT_LIB`` or the
    system's search) and declares its functions."""
    global _library
    with _library_lock:
        if _library is not None:
            return _library
        path = path or os.environ.get("EXITPOOL_AGENT_LIB") or ctypes.util.find_library(
            "exitpool_agent_ffi"
        )
        if not path:
            raise OSError(
                "libexitpool_agent_ffi not found: set EXITPOOL_AGENT_LIB to its path"
            )
        lib = ctypes.CDLL(path)  # CDLL releases the GIL during each call
        agent = ctypes.c_void_p
        signatures = {
            "exitpool_agent_new": [ctypes.c_char_p, _CALLBACK, ctypes.c_void_p, _OUT, _OUT],
            "exitpool_agent_start": [agent, _OUT],
            "exitpool_agent_pause": [agent, _OUT],
            "exitpool_agent_resume": [agent, _OUT],
            "exitpool_agent_stop": [agent, _OUT],
            "exitpool_agent_set_limits": [agent, ctypes.c_char_p, _OUT],
            "exitpool_agent_stats": [agent, _OUT, _OUT],
            "exitpool_agent_consent_record": [agent, ctypes.c_char_p, _OUT, _OUT],
            "exitpool_agent_consent_revoke": [agent, ctypes.c_bool, _OUT],
            "exitpool_agent_consent_status": [agent, _OUT, _OUT],
        }
        for name, argtypes in signatures.items():
            function = getattr(lib, name)
            function.argtypes = argtypes
            function.restype = ctypes.c_int32
        lib.exitpool_agent_free.argtypes = [agent]
        lib.exitpool_agent_free.restype = None
        lib.exitpool_string_free.argtypes = [ctypes.c_void_p]
        lib.exitpool_string_free.restype = None
        lib.exitpool_agent_version.argtypes = []
        lib.exitpool_agent_version.restype = ctypes.c_char_p
        _library = lib
        return lib


def _take_string(lib, pointer):
    """The library's string at ``pointer`` as text, freed."""
    if not pointer:
        return None
    try:
        return ctypes.string_at(pointer).decode("utf-8")
    finally:
        lib.exitpool_string_free(pointer)


class Agent:
    """One embedded agent. Safe to use from several threads; call
    :meth:`close` last (never from the ``on_state`` callback)."""

    def __init__(self, config, on_state=None, library=None):
        self._lib = load_library(library)
        if not isinstance(config, str):
            config = json.dumps(config)
        user_callback = on_state

        def trampoline(_user_data, state, reason):
            if user_callback is not None:
                try:
                    user_callback(state, reason.decode("utf-8") if reason else "")
                except Exception:  # an exception must not unwind into C
                    import traceback

                    traceback.print_exc()

        # Kept on the object: ctypes frees a callback whose Python object dies.
        self._callback = _CALLBACK(trampoline)
        self._handle = ctypes.c_void_p()
        error = ctypes.c_void_p()
        code = self._lib.exitpool_agent_new(
            config.encode("utf-8"),
            self._callback,
            None,
            ctypes.byref(self._handle),
            ctypes.byref(error),
        )
        self._check(code, error)

    def _check(self, code, error):
        if code != 0:
            raise AgentError(code, _take_string(self._lib, error.value) or "")

    def _call(self, name, *args):
        if not self._handle:
            raise AgentError(1, "the agent is closed")
        error = ctypes.c_void_p()
        code = getattr(self._lib, name)(self._handle, *args, ctypes.byref(error))
        self._check(code, error)

    def _call_for_string(self, name, *args):
        out = ctypes.c_void_p()
        self._call(name, *args, ctypes.byref(out))
        return _take_string(self._lib, out.value)

    def start(self):
        """Starts sharing (after consent); returns at once."""
        self._call("exitpool_agent_start")

    def pause(self):
        """Stops taking new streams; the gateway routes around this device."""
        self._call("exitpool_agent_pause")

    def resume(self):
        """Takes new streams again."""
        self._call("exitpool_agent_resume")

    def set_limits(self, limits):
        """``{"max_rate": ..., "quota_bytes": ..., "quota_period": "day"|"month"}``."""
        self._call("exitpool_agent_set_limits", json.dumps(limits).encode("utf-8"))

    def stats(self):
        """The agent's stats, with ``state``, ``consent`` and ``report``."""
        return json.loads(self._call_for_string("exitpool_agent_stats"))

    def record_consent(self, text=None):
        """Records the user's consent (``text``: what they agreed to)."""
        text = text.encode("utf-8") if text is not None else None
        return json.loads(self._call_for_string("exitpool_agent_consent_record", text))

    def revoke_consent(self, forget_identity=False):
        """Revokes consent: the agent stops at once; optionally forgets its key."""
        self._call("exitpool_agent_consent_revoke", bool(forget_identity))

    def consent(self):
        """The consent recorded, or ``None``."""
        return json.loads(self._call_for_string("exitpool_agent_consent_status"))

    def stop(self):
        """Stops in the background; the ``STOPPED`` state follows."""
        self._call("exitpool_agent_stop")

    def close(self):
        """Releases the agent (no callback runs after this returns)."""
        if self._handle:
            self._lib.exitpool_agent_free(self._handle)
            self._handle = ctypes.c_void_p()

    def __enter__(self):
        return self

    def __exit__(self, *_):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass
