"""The line protocol every lock-bench peer speaks, and the scenarios it runs.

A peer is a long-lived process, so the interpreter's start-up and imports are
not counted. It first prints one line, ``{"ready": true, "library": ...,
"version": ...}`` (or ``{"ready": false, "error": ...}`` and exits), then
answers each command on standard input with one JSON line:

    raw N KEY              N raw round trips of the library's client
    uncontended N KEY      N acquire+release on KEY, one client
    handoff N KEY          N hand-offs: a waiter blocked on KEY, timed from the
                           holder's release call until the waiter holds it
    contend C SECONDS KEY  C clients (threads, each its own client) on KEY
    quit

Latency commands answer ``{"ok": true, "samples_us": [...]}``; ``contend``
answers the grants made before the deadline (in all and per client),
overlapping holders seen (a shared counter, checked under a mutex), acquires
that waited 2 s or more and that timed out, the exceptions raised and the
threads still blocked 20 s after the deadline.
A command that fails answers ``{"ok": false, "error": ...}``; lock-bench
reports that peer row as broken and carries on.

An adapter gives ``connect()`` a client with ``raw(key)``, ``lock(key)``
(an object with ``acquire(timeout) -> bool`` and ``release()``),
``cleanup(key)`` and ``close()``.
"""

import json
import sys
import threading
import time
import traceback

# How long an acquire may wait before it counts as a timeout, as distlock's
# own contention scenario waits; in a contended run, at most until END_SLACK
# after the end.
ACQUIRE_TIMEOUT = 10.0
END_SLACK = 2.0
# A contended acquire that waits this long is counted: with a grant every few
# milliseconds, only a waiter that missed its wake-up waits so long.
LONG_WAIT = 2.0
# How long after the deadline a contending thread may still be blocked
# before it counts as lost.
GRACE = 20.0
# How long a hand-off waiter may take after the release.
HANDOFF_LIMIT = 30.0


def _micros(seconds):
    return round(seconds * 1e6, 1)


def _describe(error):
    text = "".join(traceback.format_exception_only(type(error), error)).strip()
    return text.splitlines()[-1] if text else type(error).__name__


class Peer:
    """Runs the scenarios with one library's adapter."""

    def __init__(self, connect):
        self.connect = connect

    def raw(self, count, key):
        client = self.connect()
        try:
            samples = []
            for _ in range(count):
                started = time.perf_counter()
                client.raw(key)
                samples.append(_micros(time.perf_counter() - started))
            return {"ok": True, "samples_us": samples}
        finally:
            client.close()

    def uncontended(self, count, key):
        client = self.connect()
        try:
            lock = client.lock(key)
            samples = []
            for _ in range(count):
                started = time.perf_counter()
                if not lock.acquire(ACQUIRE_TIMEOUT):
                    raise RuntimeError("an uncontended acquire timed out")
                lock.release()
                samples.append(_micros(time.perf_counter() - started))
            client.cleanup(key)
            return {"ok": True, "samples_us": samples}
        finally:
            client.close()

    def handoff(self, count, key):
        holder, waiter = self.connect(), self.connect()
        try:
            held, wanted = holder.lock(key), waiter.lock(key)
            samples = []
            for _ in range(count):
                if not held.acquire(ACQUIRE_TIMEOUT):
                    raise RuntimeError("the holder's acquire timed out")
                outcome = {}

                def wait():
                    try:
                        outcome["granted"] = wanted.acquire(HANDOFF_LIMIT)
                        outcome["at"] = time.perf_counter()
                    except Exception as error:  # reported, not raised in a thread
                        outcome["error"] = _describe(error)

                thread = threading.Thread(target=wait, daemon=True)
                thread.start()
                # Let the waiter's request reach the service before the release.
                time.sleep(0.01)
                released = time.perf_counter()
                held.release()
                thread.join(HANDOFF_LIMIT + 5)
                if thread.is_alive():
                    raise RuntimeError(f"the waiter was still blocked {HANDOFF_LIMIT:.0f} s after the release")
                if "error" in outcome:
                    raise RuntimeError(f"the waiter failed: {outcome['error']}")
                if not outcome.get("granted"):
                    raise RuntimeError(f"the waiter was not granted within {HANDOFF_LIMIT:.0f} s of the release")
                wanted.release()
                samples.append(_micros(outcome["at"] - released))
            holder.cleanup(key)
            return {"ok": True, "samples_us": samples}
        finally:
            holder.close()
            waiter.close()

    def contend(self, clients, seconds, key):
        connected = [self.connect() for _ in range(clients)]
        guard = threading.Lock()
        state = {"inside": 0, "overlaps": 0, "timeouts": 0, "long_waits": 0}
        grants = [0] * clients
        errors = []
        start = threading.Barrier(clients + 1)
        deadline = [0.0]

        def work(index, client):
            lock = client.lock(key)
            start.wait()
            try:
                while True:
                    asked = time.perf_counter()
                    if asked >= deadline[0]:
                        break
                    # Waits past the end are cut short: grants then no longer count.
                    ok = lock.acquire(min(ACQUIRE_TIMEOUT, deadline[0] + END_SLACK - asked))
                    waited = time.perf_counter() - asked
                    with guard:
                        if waited >= LONG_WAIT:
                            state["long_waits"] += 1
                        if not ok:
                            state["timeouts"] += 1
                            continue
                        if state["inside"] != 0:
                            state["overlaps"] += 1
                        state["inside"] += 1
                        if time.perf_counter() < deadline[0]:
                            grants[index] += 1
                        state["inside"] -= 1
                    lock.release()
            except Exception as error:  # a broken peer is reported, not raised
                with guard:
                    errors.append(_describe(error))

        threads = [threading.Thread(target=work, args=(i, c), daemon=True) for i, c in enumerate(connected)]
        for thread in threads:
            thread.start()
        deadline[0] = time.perf_counter() + seconds
        start.wait()
        for thread in threads:
            thread.join(max(0.0, deadline[0] + GRACE - time.perf_counter()))
        lost = sum(1 for thread in threads if thread.is_alive())
        if lost == 0:
            connected[0].cleanup(key)
            for client in connected:
                client.close()
        # A lost thread keeps its client: closing it under the thread could
        # hide what blocks it.
        with guard:
            return {
                "ok": True,
                "grants": sum(grants),
                "per_client": list(grants),
                "seconds": seconds,
                "overlaps": state["overlaps"],
                "timeouts": state["timeouts"],
                "long_waits": state["long_waits"],
                "errors": errors[:5],
                "error_count": len(errors),
                "lost": lost,
            }


def _answer(reply):
    sys.stdout.write(json.dumps(reply) + "\n")
    sys.stdout.flush()


def serve(library, version, connect):
    """Announces the peer, then answers commands until ``quit`` or EOF."""
    peer = Peer(connect)
    try:
        peer.connect().close()
    except Exception as error:
        _answer({"ready": False, "error": f"{library} {version} cannot connect: {_describe(error)}"})
        return
    _answer({"ready": True, "library": library, "version": version})
    for line in sys.stdin:
        words = line.split()
        if not words:
            continue
        if words[0] == "quit":
            break
        try:
            if words[0] == "raw":
                reply = peer.raw(int(words[1]), words[2])
            elif words[0] == "uncontended":
                reply = peer.uncontended(int(words[1]), words[2])
            elif words[0] == "handoff":
                reply = peer.handoff(int(words[1]), words[2])
            elif words[0] == "contend":
                reply = peer.contend(int(words[1]), float(words[2]), words[3])
            else:
                reply = {"ok": False, "error": f"unknown command {words[0]!r}"}
        except Exception as error:
            traceback.print_exc(file=sys.stderr)
            reply = {"ok": False, "error": _describe(error)}
        _answer(reply)


def unavailable(library, error):
    """Says the peer cannot run here (its package is missing or broken)."""
    _answer({"ready": False, "error": f"{library} import failed: {_describe(error)}"})
