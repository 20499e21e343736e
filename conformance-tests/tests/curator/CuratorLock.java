// Takes a Curator InterProcessMutex, prints "held", holds it for the given
// milliseconds, releases it and prints "released". Used by zk_specific.rs
// to check that Curator and distlock exclude each other.
import java.util.concurrent.TimeUnit;
import org.apache.curator.framework.CuratorFramework;
import org.apache.curator.framework.CuratorFrameworkFactory;
import org.apache.curator.framework.recipes.locks.InterProcessMutex;
import org.apache.curator.retry.RetryOneTime;

public class CuratorLock {
    public static void main(String[] args) throws Exception {
        CuratorFramework client = CuratorFrameworkFactory.newClient(args[0], new RetryOneTime(100));
        client.start();
        InterProcessMutex mutex = new InterProcessMutex(client, args[1]);
        if (!mutex.acquire(30, TimeUnit.SECONDS)) {
            System.out.println("timeout");
            System.exit(3);
        }
        System.out.println("held " + System.currentTimeMillis());
        System.out.flush();
        Thread.sleep(Long.parseLong(args[2]));
        long released = System.currentTimeMillis();
        mutex.release();
        System.out.println("released " + released);
        System.out.flush();
        client.close();
    }
}
