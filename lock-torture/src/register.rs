//! The fenced register: the resource the workers protect with the lock. It
//! accepts a write to a key only with a token at least as high as the highest
//! it has accepted for that key, and records every write, accepted or not.
//! One line of JSON per request over loopback TCP, answered `ok` or `stale`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

use crate::history::{Kind, Recorder};

/// One write request.
#[derive(Debug, Serialize, Deserialize)]
pub struct WriteRequest {
    /// The key written.
    pub key: String,
    /// The writer's fencing token.
    pub token: u64,
    /// The writer, for the history.
    pub worker: String,
}

/// The running register.
pub struct Register {
    address: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Register {
    /// Starts the register on a loopback port, recording into `path`.
    ///
    /// # Errors
    /// When the port cannot be bound or the file opened.
    pub async fn start(path: &Path) -> std::io::Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let address = listener.local_addr()?;
        let state = Arc::new(Mutex::new((HashMap::<String, u64>::new(), Recorder::open(path, "register")?)));
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream, Arc::clone(&state)));
            }
        });
        Ok(Self { address, task })
    }

    /// Where workers send their writes.
    pub fn address(&self) -> SocketAddr {
        self.address
    }
}

impl Drop for Register {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type State = Arc<Mutex<(HashMap<String, u64>, Recorder)>>;

async fn serve(stream: TcpStream, state: State) {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let Ok(request) = serde_json::from_str::<WriteRequest>(&line) else { return };
        let accepted = {
            let mut guard = state.lock().unwrap_or_else(|p| p.into_inner());
            let (highest, recorder) = &mut *guard;
            let top = highest.entry(request.key.clone()).or_insert(0);
            let accepted = request.token >= *top;
            if accepted {
                *top = request.token;
            }
            // Recorded under the lock: the file's order is the register's.
            recorder.record(Kind::Write { key: request.key, token: request.token, worker: request.worker, accepted });
            accepted
        };
        if write.write_all(if accepted { b"ok\n" } else { b"stale\n" }).await.is_err() {
            return;
        }
    }
}

/// A worker's connection to the register.
pub struct Writer {
    lines: tokio::io::Lines<BufReader<tokio::net::tcp::OwnedReadHalf>>,
    write: tokio::net::tcp::OwnedWriteHalf,
}

impl Writer {
    /// Connects to the register at `address`.
    ///
    /// # Errors
    /// When it cannot connect.
    pub async fn connect(address: &str) -> std::io::Result<Self> {
        let (read, write) = TcpStream::connect(address).await?.into_split();
        Ok(Self { lines: BufReader::new(read).lines(), write })
    }

    /// Sends one fenced write; whether the register accepted it.
    ///
    /// # Errors
    /// When the register cannot be reached.
    pub async fn write(&mut self, request: &WriteRequest) -> std::io::Result<bool> {
        let mut line = serde_json::to_vec(request).map_err(std::io::Error::other)?;
        line.push(b'\n');
        self.write.write_all(&line).await?;
        match self.lines.next_line().await? {
            Some(answer) => Ok(answer == "ok"),
            None => Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof)),
        }
    }
}
