"""lock-bench peer: a session and KV acquire with python-consul (Debian
python3-consul).

Usage: consul_peer.py HOST:PORT TTL_S; speaks protocol.py's protocol.
python-consul has no lock recipe, so this is the usual one, as Consul's own
``api.Lock`` does it: each client creates a session (renewed by a thread of
its own every third of the TTL), acquires the key with ``?acquire=`` (tried
first, so an uncontended acquire is one request), and while another session
holds it waits with a blocking query for the key to change; releases with
``?release=``. Raw is a KV ``put``, as distlock's raw round trip for Consul.
"""

import math
import sys
import threading
import time

import protocol

PREFIX = "distlock-bench-peers/consul"

try:
    import consul
except Exception as error:  # reported by lock-bench as "not available"
    protocol.unavailable("python-consul", error)
    sys.exit(0)


class Client:
    def __init__(self, host, port, ttl):
        self.consul = consul.Consul(host=host, port=port)
        self.session = self.consul.session.create(ttl=ttl, lock_delay=0)
        self.closed = threading.Event()
        # Renewal on a connection of its own: requests' sessions are not
        # meant to be shared between threads.
        renewer = consul.Consul(host=host, port=port)
        threading.Thread(target=self._renew, args=(renewer, ttl), daemon=True).start()

    def _renew(self, renewer, ttl):
        while not self.closed.wait(ttl / 3):
            try:
                renewer.session.renew(self.session)
            except Exception:
                pass  # the lock calls fail and say so if the session is gone

    def raw(self, key):
        self.consul.kv.put(f"{PREFIX}/raw", "x")

    def lock(self, key):
        return ConsulLock(self.consul, self.session, f"{PREFIX}/{key}")

    def cleanup(self, key):
        self.consul.kv.delete(f"{PREFIX}/{key}")

    def close(self):
        self.closed.set()
        self.consul.session.destroy(self.session)


class ConsulLock:
    def __init__(self, client, session, key):
        self.client, self.session, self.key = client, session, key

    def acquire(self, timeout):
        deadline = time.monotonic() + timeout
        index = None
        while True:
            if self.client.kv.put(self.key, "", acquire=self.session):
                return True
            # Held by another session: block until the key changes and no
            # session holds it, then try again.
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                index, entry = self.client.kv.get(self.key, index=index, wait=f"{math.ceil(remaining)}s")
                if entry is None or not entry.get("Session"):
                    break

    def release(self):
        if not self.client.kv.put(self.key, "", release=self.session):
            raise RuntimeError(f"releasing {self.key} failed: the session does not hold it")


def main():
    host, _, port = sys.argv[1].rpartition(":")
    # python-consul accepts session TTLs of 10 s to a day, as a stock Consul.
    ttl = min(86400, max(10, round(float(sys.argv[2]))))
    version = getattr(consul, "__version__", "?")
    protocol.serve("python-consul", version, lambda: Client(host, int(port), ttl))


if __name__ == "__main__":
    main()
