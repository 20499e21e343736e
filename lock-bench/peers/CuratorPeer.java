// lock-bench peer: Apache Curator's InterProcessMutex on ZooKeeper (Debian
// libcurator-recipes-java), compiled by lock-bench at run time against
// Debian's jars, as the interop tests compile theirs.
//
// Usage: CuratorPeer CONNECT_STRING SESSION_TIMEOUT_MS; speaks the line
// protocol of protocol.py (beside this file): a "ready" line, then one JSON
// line per command (raw, uncontended, handoff, contend, quit). One JVM serves
// every command, so its start-up and JIT warm-up are not counted; each client
// is a CuratorFramework of its own (a session). Raw is an exists, as
// distlock's raw round trip for ZooKeeper.
import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicLong;
import org.apache.curator.framework.CuratorFramework;
import org.apache.curator.framework.CuratorFrameworkFactory;
import org.apache.curator.framework.recipes.locks.InterProcessMutex;
import org.apache.curator.retry.RetryOneTime;

public class CuratorPeer {
    static final String BASE = "/distlock-bench-peers/curator";
    // As protocol.py: an acquire waits at most 10 s, in a contended run at
    // most until 2 s after the end, and one that waits 2 s is counted.
    static final long ACQUIRE_TIMEOUT_S = 10;
    static final long END_SLACK_NS = 2_000_000_000L;
    static final long LONG_WAIT_NS = 2_000_000_000L;
    static final long GRACE_MS = 20_000;
    static final long HANDOFF_LIMIT_S = 30;

    final String connect;
    final int sessionTimeoutMs;

    CuratorPeer(String connect, int sessionTimeoutMs) {
        this.connect = connect;
        this.sessionTimeoutMs = sessionTimeoutMs;
    }

    CuratorFramework client() throws InterruptedException {
        CuratorFramework client =
                CuratorFrameworkFactory.newClient(connect, sessionTimeoutMs, 15_000, new RetryOneTime(100));
        client.start();
        if (!client.blockUntilConnected(15, TimeUnit.SECONDS)) {
            client.close();
            throw new IllegalStateException("not connected to " + connect + " within 15 s");
        }
        return client;
    }

    static double micros(long nanos) {
        return Math.round(nanos / 100.0) / 10.0;
    }

    static String samples(List<Double> samples) {
        StringBuilder json = new StringBuilder("{\"ok\": true, \"samples_us\": [");
        for (int i = 0; i < samples.size(); i++) {
            json.append(i == 0 ? "" : ", ").append(samples.get(i));
        }
        return json.append("]}").toString();
    }

    String raw(int count) throws Exception {
        CuratorFramework client = client();
        try {
            List<Double> out = new ArrayList<>();
            for (int i = 0; i < count; i++) {
                long started = System.nanoTime();
                client.checkExists().forPath(BASE);
                out.add(micros(System.nanoTime() - started));
            }
            return samples(out);
        } finally {
            client.close();
        }
    }

    String uncontended(int count, String key) throws Exception {
        CuratorFramework client = client();
        try {
            InterProcessMutex mutex = new InterProcessMutex(client, BASE + "/" + key);
            List<Double> out = new ArrayList<>();
            for (int i = 0; i < count; i++) {
                long started = System.nanoTime();
                if (!mutex.acquire(ACQUIRE_TIMEOUT_S, TimeUnit.SECONDS)) {
                    throw new IllegalStateException("an uncontended acquire timed out");
                }
                mutex.release();
                out.add(micros(System.nanoTime() - started));
            }
            return samples(out);
        } finally {
            client.close();
        }
    }

    String handoff(int count, String key) throws Exception {
        CuratorFramework holder = client();
        CuratorFramework waiter = client();
        try {
            InterProcessMutex held = new InterProcessMutex(holder, BASE + "/" + key);
            InterProcessMutex wanted = new InterProcessMutex(waiter, BASE + "/" + key);
            List<Double> out = new ArrayList<>();
            for (int i = 0; i < count; i++) {
                if (!held.acquire(ACQUIRE_TIMEOUT_S, TimeUnit.SECONDS)) {
                    throw new IllegalStateException("the holder's acquire timed out");
                }
                AtomicLong grantedAt = new AtomicLong();
                Throwable[] failure = new Throwable[1];
                // The waiter's thread must also release: InterProcessMutex is
                // owned by the thread that acquired it.
                CountDownLatch granted = new CountDownLatch(1);
                CountDownLatch released = new CountDownLatch(1);
                Thread thread = new Thread(() -> {
                    try {
                        if (wanted.acquire(HANDOFF_LIMIT_S, TimeUnit.SECONDS)) {
                            grantedAt.set(System.nanoTime());
                            granted.countDown();
                            wanted.release();
                        } else {
                            failure[0] = new IllegalStateException("the waiter was not granted within "
                                    + HANDOFF_LIMIT_S + " s of the release");
                            granted.countDown();
                        }
                    } catch (Throwable error) {
                        failure[0] = error;
                        granted.countDown();
                    } finally {
                        released.countDown();
                    }
                });
                thread.setDaemon(true);
                thread.start();
                // Let the waiter's request reach the service before the release.
                Thread.sleep(10);
                long releasedAt = System.nanoTime();
                held.release();
                if (!released.await(HANDOFF_LIMIT_S + 5, TimeUnit.SECONDS)) {
                    throw new IllegalStateException("the waiter was still blocked " + HANDOFF_LIMIT_S
                            + " s after the release");
                }
                if (failure[0] != null) {
                    throw new IllegalStateException("the waiter failed: " + failure[0]);
                }
                out.add(micros(grantedAt.get() - releasedAt));
            }
            return samples(out);
        } finally {
            holder.close();
            waiter.close();
        }
    }

    String contend(int clients, double seconds, String key) throws Exception {
        List<CuratorFramework> connected = new ArrayList<>();
        for (int i = 0; i < clients; i++) {
            connected.add(client());
        }
        Object guard = new Object();
        long[] state = new long[4]; // inside, overlaps, timeouts, long waits
        long[] grants = new long[clients];
        List<String> errors = new ArrayList<>();
        CountDownLatch start = new CountDownLatch(1);
        long deadline = System.nanoTime() + (long) (seconds * 1e9);
        List<Thread> threads = new ArrayList<>();
        for (int index = 0; index < clients; index++) {
            InterProcessMutex mutex = new InterProcessMutex(connected.get(index), BASE + "/" + key);
            int client = index;
            Thread thread = new Thread(() -> {
                try {
                    start.await();
                    while (true) {
                        long asked = System.nanoTime();
                        if (asked >= deadline) {
                            break;
                        }
                        // Waits past the end are cut short: grants then no longer count.
                        long limit = Math.min(ACQUIRE_TIMEOUT_S * 1_000_000_000L, deadline + END_SLACK_NS - asked);
                        boolean ok = mutex.acquire(limit, TimeUnit.NANOSECONDS);
                        long waited = System.nanoTime() - asked;
                        synchronized (guard) {
                            if (waited >= LONG_WAIT_NS) {
                                state[3]++;
                            }
                            if (!ok) {
                                state[2]++;
                                continue;
                            }
                            if (state[0] != 0) {
                                state[1]++;
                            }
                            state[0]++;
                            if (System.nanoTime() < deadline) {
                                grants[client]++;
                            }
                            state[0]--;
                        }
                        mutex.release();
                    }
                } catch (Throwable error) {
                    synchronized (guard) {
                        errors.add(String.valueOf(error));
                    }
                }
            });
            thread.setDaemon(true);
            threads.add(thread);
            thread.start();
        }
        start.countDown();
        int lost = 0;
        for (Thread thread : threads) {
            long left = (deadline - System.nanoTime()) / 1_000_000 + GRACE_MS;
            thread.join(Math.max(1, left));
            if (thread.isAlive()) {
                lost++;
            }
        }
        if (lost == 0) {
            connected.forEach(CuratorFramework::close);
        }
        synchronized (guard) {
            StringBuilder shown = new StringBuilder("[");
            for (int i = 0; i < Math.min(5, errors.size()); i++) {
                shown.append(i == 0 ? "" : ", ").append(quote(errors.get(i)));
            }
            StringBuilder perClient = new StringBuilder("[");
            long total = 0;
            for (int i = 0; i < clients; i++) {
                perClient.append(i == 0 ? "" : ", ").append(grants[i]);
                total += grants[i];
            }
            return "{\"ok\": true, \"grants\": " + total + ", \"per_client\": " + perClient + "], \"seconds\": "
                    + seconds + ", \"overlaps\": " + state[1] + ", \"timeouts\": " + state[2]
                    + ", \"long_waits\": " + state[3] + ", \"errors\": " + shown + "], \"error_count\": "
                    + errors.size() + ", \"lost\": " + lost + "}";
        }
    }

    static String quote(String text) {
        StringBuilder json = new StringBuilder("\"");
        for (char c : text.toCharArray()) {
            if (c == '"' || c == '\\') {
                json.append('\\').append(c);
            } else if (c < 0x20) {
                json.append(String.format("\\u%04x", (int) c));
            } else {
                json.append(c);
            }
        }
        return json.append('"').toString();
    }

    public static void main(String[] args) throws Exception {
        CuratorPeer peer = new CuratorPeer(args[0], Integer.parseInt(args[1]));
        String version = CuratorFramework.class.getPackage().getImplementationVersion();
        try {
            peer.client().close();
        } catch (Exception error) {
            System.out.println("{\"ready\": false, \"error\": " + quote("Curator cannot connect: " + error) + "}");
            System.exit(0);
        }
        System.out.println("{\"ready\": true, \"library\": \"Curator\", \"version\": "
                + quote(version == null ? "?" : version) + "}");
        System.out.flush();
        BufferedReader input = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8));
        String line;
        while ((line = input.readLine()) != null) {
            String[] words = line.trim().split("\\s+");
            if (words[0].isEmpty()) {
                continue;
            }
            if (words[0].equals("quit")) {
                break;
            }
            String reply;
            try {
                switch (words[0]) {
                    case "raw":
                        reply = peer.raw(Integer.parseInt(words[1]));
                        break;
                    case "uncontended":
                        reply = peer.uncontended(Integer.parseInt(words[1]), words[2]);
                        break;
                    case "handoff":
                        reply = peer.handoff(Integer.parseInt(words[1]), words[2]);
                        break;
                    case "contend":
                        reply = peer.contend(Integer.parseInt(words[1]), Double.parseDouble(words[2]), words[3]);
                        break;
                    default:
                        reply = "{\"ok\": false, \"error\": " + quote("unknown command " + words[0]) + "}";
                }
            } catch (Exception error) {
                error.printStackTrace();
                reply = "{\"ok\": false, \"error\": " + quote(String.valueOf(error)) + "}";
            }
            System.out.println(reply);
            System.out.flush();
        }
        System.exit(0);
    }
}
