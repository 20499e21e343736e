//! The use case the reader/writer lock was made for, in miniature: an
//! object store whose nodes lock the object namespace the way MinIO does.
//! Many readers serve an object at once; a writer replaces it alone, in two
//! steps (data, then its checksum) that no reader may see half done; and
//! the store fences writes by token, so a writer that paused past its TTL
//! cannot overwrite a newer version when it wakes.
//!
//! ```sh
//! cargo run --example object_namespace                       # in memory
//! cargo run --example object_namespace -- etcd://127.0.0.1:2379
//! ```
//!
//! What a resource should compare (see `LockMode`): a write is accepted only
//! with a token at least the highest write token accepted so far.

// An example shows what happens by printing it.
#![allow(clippy::print_stdout)]

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use distlock::{LockError, Locks};
use tokio::task::JoinSet;

const OBJECT: &str = "objects/photos/cat.jpg";

/// The stored object: its bytes and a checksum written in a second step.
#[derive(Default)]
struct Object {
    data: String,
    checksum: u64,
    /// The highest token a write was accepted with.
    written_with: u64,
}

#[derive(Default)]
struct Store(Mutex<Object>);

impl Store {
    fn object(&self) -> std::sync::MutexGuard<'_, Object> {
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Step 1 of a replacement: the data, fenced by the writer's token.
    fn put_data(&self, token: u64, data: &str) -> Result<(), String> {
        let mut object = self.object();
        if token < object.written_with {
            return Err(format!("refused: token {token} is older than the last write's {}", object.written_with));
        }
        object.written_with = token;
        object.data = data.to_owned();
        Ok(())
    }

    /// Step 2: the checksum, fenced the same way.
    fn put_checksum(&self, token: u64) -> Result<(), String> {
        let mut object = self.object();
        if token < object.written_with {
            return Err(format!("refused: token {token} is older than the last write's {}", object.written_with));
        }
        object.checksum = checksum(&object.data);
        Ok(())
    }

    /// A read: the data, if its checksum matches (a torn write would not).
    fn get(&self) -> Result<String, String> {
        let object = self.object();
        if object.checksum == checksum(&object.data) {
            Ok(object.data.clone())
        } else {
            Err(format!("torn object: {:?} with checksum {}", object.data, object.checksum))
        }
    }
}

fn checksum(data: &str) -> u64 {
    data.bytes().fold(17, |sum, byte| sum.wrapping_mul(31).wrapping_add(u64::from(byte)))
}

/// One version replaced under the write lock, in two steps with a pause
/// between them that readers would see if the lock did not keep them out.
async fn replace(locks: &Locks, store: &Store, version: usize) -> Result<u64, LockError> {
    let guard = locks.write_lock(OBJECT).acquire().await?;
    let token = guard.token().get();
    store.put_data(token, &format!("cat.jpg version {version}")).map_err(|e| LockError::backend("store", None, e))?;
    tokio::time::sleep(Duration::from_millis(5)).await;
    store.put_checksum(token).map_err(|e| LockError::backend("store", None, e))?;
    guard.release().await?;
    Ok(token)
}

#[tokio::main]
async fn main() -> Result<(), LockError> {
    let url = std::env::args().nth(1).unwrap_or_else(|| "mem://object-namespace".to_owned());
    let store = std::sync::Arc::new(Store::default());
    let writer = distlock::connect(&url).await?;
    replace(&writer, &store, 0).await?;

    // Four nodes serve the object, each reading it 25 times under the read
    // lock, while the writer replaces it ten times.
    let (reads, most_at_once, inside) = (
        std::sync::Arc::new(AtomicUsize::new(0)),
        std::sync::Arc::new(AtomicUsize::new(0)),
        std::sync::Arc::new(AtomicUsize::new(0)),
    );
    let mut nodes = JoinSet::new();
    for node in 0..4 {
        let locks = distlock::connect(&url).await?;
        let (store, reads, most_at_once, inside) = (store.clone(), reads.clone(), most_at_once.clone(), inside.clone());
        nodes.spawn(async move {
            for _ in 0..25 {
                let guard = locks.read_lock(OBJECT).acquire().await?;
                let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                most_at_once.fetch_max(now, Ordering::SeqCst);
                let served = store.get().map_err(|e| LockError::backend("store", None, e))?;
                tokio::time::sleep(Duration::from_millis(2)).await;
                inside.fetch_sub(1, Ordering::SeqCst);
                guard.release().await?;
                reads.fetch_add(1, Ordering::SeqCst);
                if served.is_empty() {
                    println!("node {node}: empty object");
                }
            }
            Ok::<(), LockError>(())
        });
    }
    let mut last_token = 0;
    for version in 1..=10 {
        last_token = replace(&writer, &store, version).await?;
    }
    while let Some(node) = nodes.join_next().await {
        node.map_err(|e| LockError::backend("example", None, e))??;
    }
    println!(
        "served {} reads, never a torn object; up to {} readers at once; 10 replacements, last token {last_token}",
        reads.load(Ordering::SeqCst),
        most_at_once.load(Ordering::SeqCst)
    );

    // A writer that paused past its TTL between its two steps: its lock
    // expired, a newer version was written, and its late step is refused.
    if !writer.capabilities().expires {
        println!("({} frees a lock when its holder dies, not by TTL: no paused writer to show)", writer.backend_name());
        return Ok(());
    }
    let ttl = Duration::from_millis(300);
    let paused = writer.write_lock(OBJECT).ttl(ttl).auto_renew(false).acquire().await?;
    let stale_token = paused.token().get();
    tokio::time::sleep(ttl * 2).await; // the pause
    let newer = distlock::connect(&url).await?;
    let newer_token = replace(&newer, &store, 11).await?;
    let late = store.put_data(stale_token, "cat.jpg from a writer that slept");
    println!("paused writer (token {stale_token}) wakes after version 11 (token {newer_token}): {late:?}");
    assert!(late.is_err(), "the store must refuse the paused writer's late write");
    assert_eq!(store.get().map_err(|e| LockError::backend("store", None, e))?, "cat.jpg version 11");
    let _ = paused.release().await; // reports the loss
    Ok(())
}
