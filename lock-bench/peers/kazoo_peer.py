"""lock-bench peer: kazoo's Lock recipe on ZooKeeper (Debian python3-kazoo).

Usage: kazoo_peer.py HOSTS SESSION_TIMEOUT_S; speaks protocol.py's protocol.
Each client is a KazooClient of its own (a session and its threads); raw is
an ``exists``, as distlock's raw round trip for ZooKeeper.
"""

import sys

import protocol

BASE = "/distlock-bench-peers/kazoo"

try:
    import kazoo
    from kazoo.client import KazooClient
    from kazoo.exceptions import LockTimeout, NoNodeError, NotEmptyError
except Exception as error:  # reported by lock-bench as "not available"
    protocol.unavailable("kazoo", error)
    sys.exit(0)


class KazooLock:
    def __init__(self, recipe):
        self.recipe = recipe

    def acquire(self, timeout):
        try:
            return self.recipe.acquire(timeout=timeout)
        except LockTimeout:
            return False

    def release(self):
        self.recipe.release()


class Client:
    def __init__(self, hosts, timeout):
        self.zk = KazooClient(hosts=hosts, timeout=timeout)
        self.zk.start(timeout=15)

    def raw(self, key):
        self.zk.exists(BASE)

    def lock(self, key):
        return KazooLock(self.zk.Lock(f"{BASE}/{key}"))

    def cleanup(self, key):
        # kazoo's lock directory is a persistent node; leave none behind.
        try:
            self.zk.delete(f"{BASE}/{key}")
        except (NoNodeError, NotEmptyError):
            pass

    def close(self):
        self.zk.stop()
        self.zk.close()


def main():
    hosts, timeout = sys.argv[1], float(sys.argv[2])
    protocol.serve("kazoo", getattr(kazoo, "__version__", "?"), lambda: Client(hosts, timeout))


if __name__ == "__main__":
    main()
