//! A loopback TCP proxy a test can stall, to cut a client off from its
//! service the way a network partition does: connections stay open, bytes
//! stop flowing, nothing is refused.

use std::io;
use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// A proxy from a local port to `upstream`.
#[derive(Debug)]
pub struct StallProxy {
    address: SocketAddr,
    stalled: watch::Sender<bool>,
    replies_stalled: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl StallProxy {
    /// Listens on an ephemeral loopback port and forwards to `upstream`.
    ///
    /// # Errors
    /// When the port cannot be bound.
    pub async fn start(upstream: SocketAddr) -> io::Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let address = listener.local_addr()?;
        let (stalled, watching) = watch::channel(false);
        let (replies_stalled, watching_replies) = watch::channel(false);
        let task = tokio::spawn(accept(listener, upstream, watching, watching_replies));
        Ok(Self { address, stalled, replies_stalled, task })
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
        self.stalled.send_replace(true);
    }

    /// Forwards again, in both directions.
    pub fn resume(&self) {
        self.stalled.send_replace(false);
        self.replies_stalled.send_replace(false);
    }

    /// Holds back only what the service sends: requests still arrive and are
    /// applied, their replies are lost, as on a connection that dies after
    /// the request left.
    pub fn stall_replies(&self) {
        self.replies_stalled.send_replace(true);
    }
}

impl Drop for StallProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept(
    listener: TcpListener,
    upstream: SocketAddr,
    stalled: watch::Receiver<bool>,
    replies_stalled: watch::Receiver<bool>,
) {
    let mut connections = tokio::task::JoinSet::new();
    while let Ok((client, _)) = listener.accept().await {
        let (stalled, replies_stalled) = (stalled.clone(), replies_stalled.clone());
        connections.spawn(async move {
            if await_flowing(&stalled).await.is_err() {
                return;
            }
            let Ok(server) = TcpStream::connect(upstream).await else { return };
            let (client_read, client_write) = client.into_split();
            let (server_read, server_write) = server.into_split();
            tokio::select! {
                _ = pump(client_read, server_write, stalled.clone(), None) => {}
                _ = pump(server_read, client_write, stalled, Some(replies_stalled)) => {}
            }
        });
    }
}

async fn await_flowing(stalled: &watch::Receiver<bool>) -> Result<(), watch::error::RecvError> {
    stalled.clone().wait_for(|stalled| !*stalled).await.map(|_| ())
}

/// Copies bytes, holding each chunk back while the proxy (or, for the reply
/// direction, the replies) are stalled.
async fn pump(
    mut from: impl AsyncReadExt + Unpin,
    mut to: impl AsyncWriteExt + Unpin,
    stalled: watch::Receiver<bool>,
    direction_stalled: Option<watch::Receiver<bool>>,
) -> io::Result<()> {
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        await_flowing(&stalled).await.map_err(io::Error::other)?;
        let read = from.read(&mut buffer).await?;
        if read == 0 {
            return Ok(());
        }
        await_flowing(&stalled).await.map_err(io::Error::other)?;
        if let Some(direction) = &direction_stalled {
            await_flowing(direction).await.map_err(io::Error::other)?;
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
