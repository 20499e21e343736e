//! A loopback TCP proxy a test can break in the ways a network breaks: stall
//! it (a partition: connections stay open, bytes stop flowing, nothing is
//! refused), reset its connections (RST both ways; the client may connect
//! again), slow each direction down, or let requests through and lose the
//! replies.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// A proxy from a local port to `upstream`.
#[derive(Debug)]
pub struct StallProxy {
    address: SocketAddr,
    faults: Arc<Faults>,
    task: JoinHandle<()>,
}

/// The faults in force, shared with every connection of the proxy.
#[derive(Debug)]
struct Faults {
    stalled: watch::Sender<bool>,
    replies: watch::Sender<Replies>,
    /// Bumped to reset every open connection.
    resets: watch::Sender<u64>,
    /// Added before each chunk is forwarded: (towards the service, towards the client).
    latency: watch::Sender<(Duration, Duration)>,
}

/// What happens to what the service sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Replies {
    Forwarded,
    /// Held back until the proxy resumes.
    Held,
    /// Thrown away; the connection is reset when the proxy resumes, since
    /// its byte stream is broken.
    Dropped,
}

impl StallProxy {
    /// Listens on an ephemeral loopback port and forwards to `upstream`.
    ///
    /// # Errors
    /// When the port cannot be bound.
    pub async fn start(upstream: SocketAddr) -> io::Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let address = listener.local_addr()?;
        let faults = Arc::new(Faults {
            stalled: watch::Sender::new(false),
            replies: watch::Sender::new(Replies::Forwarded),
            resets: watch::Sender::new(0),
            latency: watch::Sender::new((Duration::ZERO, Duration::ZERO)),
        });
        let task = tokio::spawn(accept(listener, upstream, Arc::clone(&faults)));
        Ok(Self { address, faults, task })
    }

    /// A proxy that accepts connections and never forwards a byte: an
    /// endpoint that is reachable at the TCP level and never answers.
    ///
    /// # Errors
    /// When the port cannot be bound.
    pub async fn black_hole() -> io::Result<Self> {
        let proxy = Self::start(SocketAddr::from(([127, 0, 0, 1], 9))).await?;
        proxy.stall();
        Ok(proxy)
    }

    /// The address clients connect to.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Stops forwarding in both directions.
    pub fn stall(&self) {
        self.faults.stalled.send_replace(true);
    }

    /// Forwards again, in both directions, without added latency. Replies
    /// that were dropped broke their connections' byte streams: those
    /// connections are reset now.
    pub fn resume(&self) {
        let dropped = self.faults.replies.send_replace(Replies::Forwarded) == Replies::Dropped;
        self.faults.latency.send_replace((Duration::ZERO, Duration::ZERO));
        self.faults.stalled.send_replace(false);
        if dropped {
            self.reset();
        }
    }

    /// Holds back only what the service sends: requests still arrive and are
    /// applied, their replies are lost, as on a connection that dies after
    /// the request left.
    pub fn stall_replies(&self) {
        self.faults.replies.send_replace(Replies::Held);
    }

    /// Throws away what the service sends until [`resume`](Self::resume),
    /// which then resets the connections: requests are applied, their
    /// replies never arrive, and the client must connect again.
    pub fn drop_replies(&self) {
        self.faults.replies.send_replace(Replies::Dropped);
    }

    /// Resets every open connection (an RST to both sides, as a crashed
    /// middlebox or a restarted peer would send); new connections are
    /// accepted as before.
    pub fn reset(&self) {
        self.faults.resets.send_modify(|generation| *generation += 1);
    }

    /// Delays every chunk by `to_service` on its way to the service and by
    /// `to_client` on its way back, until [`resume`](Self::resume).
    pub fn add_latency(&self, to_service: Duration, to_client: Duration) {
        self.faults.latency.send_replace((to_service, to_client));
    }
}

impl Drop for StallProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept(listener: TcpListener, upstream: SocketAddr, faults: Arc<Faults>) {
    let mut connections = tokio::task::JoinSet::new();
    while let Ok((client, _)) = listener.accept().await {
        let faults = Arc::clone(&faults);
        connections.spawn(async move {
            let mut resets = faults.resets.subscribe();
            resets.mark_unchanged();
            if await_flowing(&faults.stalled.subscribe()).await.is_err() {
                return;
            }
            let Ok(server) = TcpStream::connect(upstream).await else { return };
            // On a reset, closing with a zero linger sends an RST instead of a FIN.
            let _ = client.set_zero_linger();
            let _ = server.set_zero_linger();
            let (client_read, client_write) = client.into_split();
            let (server_read, server_write) = server.into_split();
            tokio::select! {
                _ = pump(client_read, server_write, &faults, Direction::ToService) => {}
                _ = pump(server_read, client_write, &faults, Direction::ToClient) => {}
                _ = resets.changed() => {}
            }
        });
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    ToService,
    ToClient,
}

async fn await_flowing(stalled: &watch::Receiver<bool>) -> Result<(), watch::error::RecvError> {
    stalled.clone().wait_for(|stalled| !*stalled).await.map(|_| ())
}

/// Copies bytes, holding each chunk back while the proxy is stalled (or, for
/// replies, held), delaying it by the latency in force, and throwing replies
/// away while they are dropped.
async fn pump(
    mut from: impl AsyncReadExt + Unpin,
    mut to: impl AsyncWriteExt + Unpin,
    faults: &Faults,
    direction: Direction,
) -> io::Result<()> {
    let (stalled, mut replies) = (faults.stalled.subscribe(), faults.replies.subscribe());
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        await_flowing(&stalled).await.map_err(io::Error::other)?;
        let read = from.read(&mut buffer).await?;
        if read == 0 {
            return Ok(());
        }
        let (to_service, to_client) = *faults.latency.borrow();
        let delay = if direction == Direction::ToService { to_service } else { to_client };
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        await_flowing(&stalled).await.map_err(io::Error::other)?;
        if direction == Direction::ToClient {
            let now = *replies.wait_for(|replies| *replies != Replies::Held).await.map_err(io::Error::other)?;
            if now == Replies::Dropped {
                continue;
            }
        }
        to.write_all(&buffer[..read]).await?;
    }
}

/// The timeouts of a client pointed at a black hole: the unreachable-endpoint
/// case expects its error within [`UNREACHABLE_BOUND`].
pub(crate) const UNREACHABLE_TIMEOUTS: lock_core::ClientTimeouts = lock_core::ClientTimeouts {
    connect: std::time::Duration::from_secs(1),
    request: std::time::Duration::from_secs(1),
};

/// How long a client with [`UNREACHABLE_TIMEOUTS`] may take to fail.
pub(crate) const UNREACHABLE_BOUND: std::time::Duration = std::time::Duration::from_secs(2);

/// Black holes ([`StallProxy::black_hole`]) a harness hands out, kept open
/// as long as the harness lives.
#[derive(Debug, Default)]
pub(crate) struct BlackHoles(std::sync::Mutex<Vec<StallProxy>>);

impl BlackHoles {
    /// Opens one more; returns its address.
    pub(crate) async fn open(&self) -> SocketAddr {
        let hole = StallProxy::black_hole().await.unwrap_or_else(|e| panic!("cannot start a black hole: {e}"));
        let address = hole.address();
        self.0.lock().unwrap_or_else(|p| p.into_inner()).push(hole);
        address
    }
}
