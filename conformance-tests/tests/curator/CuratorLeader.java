// A participant of a Curator LeaderSelector election, or a look at it:
//   CuratorLeader HOSTS PATH lead ID
//     joins the election as ID, prints "leading <millis>" once it leads,
//     leads until a line (or the end of input) arrives on standard input,
//     then prints "released <millis>" with the time just before it gives
//     leadership up, and exits;
//   CuratorLeader HOSTS PATH leader
//     prints "leader <id>" with getLeader().getId(), or "none" while nobody
//     leads, and exits.
// Used by zk_election.rs to check that Curator's election and distlock's
// see one leader.
import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.util.concurrent.CountDownLatch;
import org.apache.curator.framework.CuratorFramework;
import org.apache.curator.framework.CuratorFrameworkFactory;
import org.apache.curator.framework.recipes.leader.LeaderSelector;
import org.apache.curator.framework.recipes.leader.LeaderSelectorListenerAdapter;
import org.apache.curator.framework.recipes.leader.Participant;
import org.apache.curator.retry.RetryOneTime;

public class CuratorLeader {
    public static void main(String[] args) throws Exception {
        CuratorFramework client = CuratorFrameworkFactory.newClient(args[0], new RetryOneTime(100));
        client.start();
        CountDownLatch done = new CountDownLatch(1);
        LeaderSelector selector = new LeaderSelector(client, args[1], new LeaderSelectorListenerAdapter() {
            @Override
            public void takeLeadership(CuratorFramework leading) throws Exception {
                System.out.println("leading " + System.currentTimeMillis());
                System.out.flush();
                new BufferedReader(new InputStreamReader(System.in)).readLine();
                System.out.println("released " + System.currentTimeMillis());
                System.out.flush();
                done.countDown();
            }
        });
        if (args[2].equals("leader")) {
            client.blockUntilConnected();
            Participant leader = selector.getLeader();
            System.out.println(leader.isLeader() ? "leader " + leader.getId() : "none");
            System.out.flush();
        } else {
            selector.setId(args[3]);
            selector.start();
            done.await();
            selector.close();
        }
        client.close();
    }
}
