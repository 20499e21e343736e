// Takes one side of a Curator InterProcessReadWriteLock:
//   CuratorReadWriteLock HOSTS PATH read|write WAIT_MILLIS
// waits at most WAIT_MILLIS for it (0: one look, as Curator's acquire(0)
// does), prints "held <millis>" once it holds it or "timeout" (exit 3) if
// not, then holds it until a line (or the end of input) arrives on standard
// input, releases it and prints "released <millis>" with the time just
// before the release. Used by zk_reader_writer.rs to check that Curator's
// reader/writer lock and distlock's share and exclude as they should.
import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.util.concurrent.TimeUnit;
import org.apache.curator.framework.CuratorFramework;
import org.apache.curator.framework.CuratorFrameworkFactory;
import org.apache.curator.framework.recipes.locks.InterProcessMutex;
import org.apache.curator.framework.recipes.locks.InterProcessReadWriteLock;
import org.apache.curator.retry.RetryOneTime;

public class CuratorReadWriteLock {
    public static void main(String[] args) throws Exception {
        CuratorFramework client = CuratorFrameworkFactory.newClient(args[0], new RetryOneTime(100));
        client.start();
        InterProcessReadWriteLock lock = new InterProcessReadWriteLock(client, args[1]);
        InterProcessMutex side = args[2].equals("read") ? lock.readLock() : lock.writeLock();
        if (!side.acquire(Long.parseLong(args[3]), TimeUnit.MILLISECONDS)) {
            System.out.println("timeout");
            System.out.flush();
            client.close();
            System.exit(3);
        }
        System.out.println("held " + System.currentTimeMillis());
        System.out.flush();
        new BufferedReader(new InputStreamReader(System.in)).readLine();
        long released = System.currentTimeMillis();
        side.release();
        System.out.println("released " + released);
        System.out.flush();
        client.close();
    }
}
