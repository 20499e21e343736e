"""lock-bench peer: python-etcd3's Lock on etcd (Debian python3-etcd3).

Usage: etcd3_peer.py HOST:PORT TTL_S [as-is|tenacity-shim]; speaks
protocol.py's protocol. Each client is an ``etcd3.client`` of its own (a
gRPC channel); raw is a ``put``, as distlock's raw round trip for etcd. The
Lock is the library's as it stands: each acquire attempt grants a new lease
and tries a create-if-absent transaction; a waiter watches the key once and
tries again.

On Debian 12, python3-etcd3 0.12 meets python3-tenacity 8.2, which calls a
``wait`` callback with one argument (the retry state); the Lock's callback
takes two, so every acquire that finds the lock held raises TypeError.
``as-is`` measures the library so (lock-bench reports it broken);
``tenacity-shim`` hands the library's own callback the two values it asks
for and changes nothing else, so its contended rows can still be compared.
"""

import inspect
import os
import sys
import types

import protocol

PREFIX = "distlock-bench-peers/etcd3"

try:
    import etcd3
    import etcd3.locks
    import tenacity
except Exception as error:  # reported by lock-bench as "not available"
    protocol.unavailable("python-etcd3", error)
    sys.exit(0)


def shim_tenacity():
    """Adapts tenacity's one-argument ``wait`` call to etcd3.Lock's callback."""

    def retry(*args, **kwargs):
        wait = kwargs.get("wait")
        if callable(wait) and len(inspect.signature(wait).parameters) == 2:
            kwargs["wait"] = lambda state: wait(state.attempt_number, state.seconds_since_start)
        return tenacity.retry(*args, **kwargs)

    shim = types.SimpleNamespace(**{name: getattr(tenacity, name) for name in dir(tenacity) if not name.startswith("__")})
    shim.retry = retry
    etcd3.locks.tenacity = shim


class Client:
    def __init__(self, host, port, ttl):
        self.etcd = etcd3.client(host=host, port=port, timeout=15)
        self.ttl = ttl

    def raw(self, key):
        self.etcd.put(f"{PREFIX}/raw", "x")

    def lock(self, key):
        return EtcdLock(self.etcd.lock(f"{PREFIX}/{key}", ttl=self.ttl))

    def cleanup(self, key):
        pass  # release deletes the key; each attempt's lease expires by itself

    def close(self):
        self.etcd.close()


class EtcdLock:
    def __init__(self, recipe):
        self.recipe = recipe

    def acquire(self, timeout):
        return self.recipe.acquire(timeout=timeout)

    def release(self):
        self.recipe.release()


def main():
    host, _, port = sys.argv[1].rpartition(":")
    ttl = max(1, round(float(sys.argv[2])))
    mode = sys.argv[3] if len(sys.argv) > 3 else "as-is"
    version = getattr(etcd3, "__version__", "?")
    if mode == "tenacity-shim":
        shim_tenacity()
        version += ", tenacity shimmed"
    implementation = os.environ.get("PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION")
    if implementation:
        version += f", protobuf {implementation}"
    protocol.serve("python-etcd3", version, lambda: Client(host, int(port), ttl))


if __name__ == "__main__":
    main()
