//! The 3-member clusters `scripts/services start {etcd|zk|consul} --cluster`
//! runs: their members, which one leads, and stopping or killing a member by
//! its PID and starting it again with the command line it ran, so that a
//! failover test or the fault campaign can take the leader away and give it
//! back without rebuilding the cluster.

use std::path::PathBuf;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::{Instant, sleep, timeout};

/// Which service a cluster runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    /// etcd, members `e1`..`e3`.
    Etcd,
    /// ZooKeeper, servers `z1`..`z3`.
    Zk,
    /// Consul, servers `c1`..`c3`.
    Consul,
}

impl Service {
    /// The service's name in `scripts/services`.
    pub fn name(self) -> &'static str {
        match self {
            Service::Etcd => "etcd",
            Service::Zk => "zk",
            Service::Consul => "consul",
        }
    }
}

/// One member of a cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Its name in `scripts/services` (`e2`), which names its PID file.
    pub name: String,
    /// The address a client dials: `http://127.0.0.1:22379` (etcd, Consul)
    /// or `127.0.0.1:22181` (ZooKeeper).
    pub client: String,
    /// Consul only: the server (raft) address `/v1/status/leader` names.
    pub raft: Option<String>,
}

/// A cluster of `scripts/services`, or one the environment names.
#[derive(Debug, Clone)]
pub struct Cluster {
    /// The service.
    pub service: Service,
    /// Its members, in the order `scripts/services` names them.
    pub members: Vec<Member>,
}

/// A member stopped by [`Cluster::kill`]: what it takes to start it again.
#[derive(Debug, Clone)]
pub struct Stopped {
    member: usize,
    command_line: Vec<String>,
    directory: PathBuf,
}

impl Cluster {
    /// The etcd cluster: `DISTLOCK_ETCD_CLUSTER_ENDPOINTS` (comma-separated
    /// URLs), by default the three members `scripts/services` starts.
    pub fn etcd() -> Self {
        let endpoints = std::env::var("DISTLOCK_ETCD_CLUSTER_ENDPOINTS")
            .unwrap_or_else(|_| "http://127.0.0.1:22379,http://127.0.0.1:22479,http://127.0.0.1:22579".to_owned());
        Self::named(Service::Etcd, "e", endpoints.split(',').map(|e| (e.to_owned(), None)))
    }

    /// The ZooKeeper ensemble: `DISTLOCK_ZK_CLUSTER_HOSTS` (`host:port,...`),
    /// by default the three servers `scripts/services` starts.
    pub fn zk() -> Self {
        let hosts = std::env::var("DISTLOCK_ZK_CLUSTER_HOSTS")
            .unwrap_or_else(|_| "127.0.0.1:22181,127.0.0.1:22182,127.0.0.1:22183".to_owned());
        Self::named(Service::Zk, "z", hosts.split(',').map(|h| (h.to_owned(), None)))
    }

    /// The three Consul servers `scripts/services` starts (HTTP 28500,
    /// 28510, 28520; raft 28300, 28310, 28320).
    pub fn consul() -> Self {
        let members = [(28500, 28300), (28510, 28310), (28520, 28320)]
            .map(|(http, raft)| (format!("http://127.0.0.1:{http}"), Some(format!("127.0.0.1:{raft}"))));
        Self::named(Service::Consul, "c", members.into_iter())
    }

    /// The cluster of `service`.
    pub fn of(service: Service) -> Self {
        match service {
            Service::Etcd => Self::etcd(),
            Service::Zk => Self::zk(),
            Service::Consul => Self::consul(),
        }
    }

    fn named(service: Service, letter: &str, members: impl Iterator<Item = (String, Option<String>)>) -> Self {
        let members = members
            .enumerate()
            .map(|(index, (client, raft))| Member { name: format!("{letter}{}", index + 1), client, raft })
            .collect();
        Self { service, members }
    }

    /// The clients' addresses joined with commas, as a multi-host URL or
    /// configuration takes them.
    pub fn client_list(&self) -> String {
        self.members.iter().map(|m| m.client.as_str()).collect::<Vec<_>>().join(",")
    }

    /// The index of the current leader, asked of every member (etcd: its
    /// status; ZooKeeper: `srvr`; Consul: `/v1/status/leader`).
    pub async fn leader(&self) -> Option<usize> {
        for (index, member) in self.members.iter().enumerate() {
            let answer = match self.service {
                Service::Etcd => etcd_leads(&member.client).await.then_some(index),
                Service::Zk => zk_mode(&member.client).await.filter(|mode| mode == "leader").map(|_| index),
                Service::Consul => self.consul_leader(member).await,
            };
            if answer.is_some() {
                return answer;
            }
        }
        None
    }

    /// The index of the leader, waiting up to `limit` for an election.
    ///
    /// # Errors
    /// When no member leads by then, with how to start the cluster.
    pub async fn await_leader(&self, limit: Duration) -> Result<usize, String> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(leader) = self.leader().await {
                return Ok(leader);
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "no leader among {} within {limit:?}: start the cluster with `scripts/services start {} --cluster`",
                    self.client_list(),
                    self.service.name()
                ));
            }
            sleep(Duration::from_millis(200)).await;
        }
    }

    /// Whether `member` serves clients again (etcd answers its status,
    /// ZooKeeper is in a quorum, the Consul agent knows a leader).
    pub async fn serving(&self, member: usize) -> bool {
        let Some(m) = self.members.get(member) else { return false };
        match self.service {
            Service::Etcd => etcd_status(&m.client).await.is_some(),
            Service::Zk => zk_mode(&m.client).await.is_some(),
            Service::Consul => self.consul_leader(m).await.is_some(),
        }
    }

    /// The PID file `scripts/services` wrote for `member`.
    pub fn pid_file(&self, member: usize) -> PathBuf {
        let name = self.members.get(member).map_or("", |m| m.name.as_str());
        crate::services_dir().join("run").join(format!("{}-cluster", self.service.name())).join(format!("{name}.pid"))
    }

    /// The PID of `member`, from its PID file.
    pub fn pid(&self, member: usize) -> Option<i32> {
        std::fs::read_to_string(self.pid_file(member)).ok()?.trim().parse().ok()
    }

    /// Kills `member` with SIGKILL, after noting its command line and working
    /// directory so that [`Cluster::start_again`] can bring it back with its
    /// data.
    ///
    /// # Errors
    /// When the member has no PID file, is not running, or cannot be killed.
    pub fn kill(&self, member: usize) -> Result<Stopped, String> {
        let pid = self.pid(member).ok_or_else(|| {
            format!(
                "no PID file {} (start the cluster with `scripts/services start {} --cluster`)",
                self.pid_file(member).display(),
                self.service.name()
            )
        })?;
        let proc = PathBuf::from(format!("/proc/{pid}"));
        let command_line = std::fs::read(proc.join("cmdline")).map_err(|e| format!("member pid {pid}: {e}"))?;
        let command_line: Vec<String> = command_line
            .split(|byte| *byte == 0)
            .filter(|part| !part.is_empty())
            .map(|part| String::from_utf8_lossy(part).into_owned())
            .collect();
        let directory = std::fs::read_link(proc.join("cwd")).map_err(|e| format!("member pid {pid}: {e}"))?;
        let status = std::process::Command::new("kill").args(["-9", &pid.to_string()]).status();
        if !matches!(status, Ok(s) if s.success()) {
            return Err(format!("could not kill member {member} (pid {pid}): {status:?}"));
        }
        // Gone (a zombie of its parent at most) before it counts as down.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while std::time::Instant::now() < deadline && process_runs(pid) {
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Stopped { member, command_line, directory })
    }

    /// Starts a member [`Cluster::kill`] stopped, with the command line and
    /// directory it ran with (its data is still there), output appended to
    /// its log, its new PID in its PID file; then waits up to `limit` until
    /// it serves again.
    ///
    /// # Errors
    /// When it cannot be started or does not serve within `limit`.
    pub async fn start_again(&self, stopped: &Stopped, limit: Duration) -> Result<(), String> {
        use std::os::unix::process::CommandExt;
        let (program, arguments) = stopped.command_line.split_first().ok_or("the member had no command line")?;
        let pid_file = self.pid_file(stopped.member);
        let log = pid_file.with_extension("log");
        let output = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(|e| format!("{}: {e}", log.display()))?;
        let errors = output.try_clone().map_err(|e| e.to_string())?;
        let child = std::process::Command::new(program)
            .args(arguments)
            .current_dir(&stopped.directory)
            .stdin(std::process::Stdio::null())
            .stdout(output)
            .stderr(errors)
            // Its own process group, as `scripts/services` leaves it: a
            // signal to the test's group does not reach it.
            .process_group(0)
            .spawn()
            .map_err(|e| format!("cannot start {program}: {e}"))?;
        std::fs::write(&pid_file, format!("{}\n", child.id())).map_err(|e| format!("{}: {e}", pid_file.display()))?;
        let deadline = Instant::now() + limit;
        while !self.serving(stopped.member).await {
            if Instant::now() >= deadline {
                return Err(format!("member {} did not serve again within {limit:?}", stopped.member));
            }
            sleep(Duration::from_millis(200)).await;
        }
        Ok(())
    }

    async fn consul_leader(&self, member: &Member) -> Option<usize> {
        let reply = http(&member.client, "GET", "/v1/status/leader").await?;
        self.members.iter().position(|m| m.raft.as_ref().is_some_and(|raft| reply.contains(&format!("\"{raft}\""))))
    }
}

fn process_runs(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|stat| stat.rsplit(')').next().is_some_and(|rest| !rest.trim_start().starts_with('Z')))
}

/// `(member id, leader id)` from an etcd member's status, through its JSON
/// gateway (so this module needs no etcd client).
async fn etcd_status(endpoint: &str) -> Option<(String, String)> {
    let reply = http(endpoint, "POST", "/v3/maintenance/status").await?;
    Some((json_string(&reply, "member_id")?, json_string(&reply, "leader")?))
}

async fn etcd_leads(endpoint: &str) -> bool {
    etcd_status(endpoint).await.is_some_and(|(member, leader)| member == leader)
}

/// The string value of `"field"` in a small JSON reply.
fn json_string(reply: &str, field: &str) -> Option<String> {
    let after = &reply[reply.find(&format!("\"{field}\""))? + field.len() + 2..];
    let value = after.trim_start().strip_prefix(':')?.trim_start().strip_prefix('"')?;
    Some(value[..value.find('"')?].to_owned())
}

/// One HTTP/1.1 exchange with `base` (`http://host:port`), an empty JSON
/// object as the body; the whole reply when it is a 200, within 3 s.
async fn http(base: &str, method: &str, path: &str) -> Option<String> {
    let address = base.trim_start_matches("http://").trim_end_matches('/').to_owned();
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(&address).await.ok()?;
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\n\
             Content-Length: 2\r\nConnection: close\r\n\r\n{{}}"
        );
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut reply = String::new();
        stream.read_to_string(&mut reply).await.ok()?;
        reply.starts_with("HTTP/1.1 200").then_some(reply)
    };
    timeout(Duration::from_secs(3), exchange).await.ok()?
}

/// A ZooKeeper server's mode (`leader`, `follower`, `standalone`) from
/// `srvr`, which names it only while the server is in a quorum.
async fn zk_mode(host: &str) -> Option<String> {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(host).await.ok()?;
        stream.write_all(b"srvr").await.ok()?;
        let mut reply = String::new();
        stream.read_to_string(&mut reply).await.ok()?;
        reply.lines().find_map(|line| line.strip_prefix("Mode: ").map(|mode| mode.trim().to_owned()))
    };
    timeout(Duration::from_secs(3), exchange).await.ok()?
}
