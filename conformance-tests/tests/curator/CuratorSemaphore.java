// Takes one lease of a Curator InterProcessSemaphoreV2:
//   CuratorSemaphore HOSTS PATH MAX_LEASES WAIT_MILLIS
// waits at most WAIT_MILLIS for it (0: one look, as acquire(0) does), prints
// "held <millis>" once it holds it or "timeout" (exit 3) if not, then holds
// it until a line (or the end of input) arrives on standard input, closes
// the lease and prints "released <millis>" with the time just before.
// Used by zk_semaphore.rs to check that Curator's semaphore and distlock's
// share one set of places.
import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.util.concurrent.TimeUnit;
import org.apache.curator.framework.CuratorFramework;
import org.apache.curator.framework.CuratorFrameworkFactory;
import org.apache.curator.framework.recipes.locks.InterProcessSemaphoreV2;
import org.apache.curator.framework.recipes.locks.Lease;
import org.apache.curator.retry.RetryOneTime;

public class CuratorSemaphore {
    public static void main(String[] args) throws Exception {
        CuratorFramework client = CuratorFrameworkFactory.newClient(args[0], new RetryOneTime(100));
        client.start();
        InterProcessSemaphoreV2 semaphore = new InterProcessSemaphoreV2(client, args[1], Integer.parseInt(args[2]));
        Lease lease = semaphore.acquire(Long.parseLong(args[3]), TimeUnit.MILLISECONDS);
        if (lease == null) {
            System.out.println("timeout");
            System.out.flush();
            client.close();
            System.exit(3);
        }
        System.out.println("held " + System.currentTimeMillis());
        System.out.flush();
        new BufferedReader(new InputStreamReader(System.in)).readLine();
        long released = System.currentTimeMillis();
        lease.close();
        System.out.println("released " + released);
        System.out.flush();
        client.close();
    }
}
