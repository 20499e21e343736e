//! Why every write carries the fencing token: a holder paused between its
//! last look at the lock and its write (a GC pause, a stopped VM) wakes up
//! after its lock expired and someone else took it. Its late write must not
//! win, and only the resource can refuse it: it keeps the highest token it has
//! seen per key and rejects anything lower.
//!
//! ```sh
//! cargo run --example fenced_writes
//! ```
//!
//! The same happens with every backend; `mem://` keeps the example
//! self-contained. `lock-torture` runs this scenario (and more) against the
//! real services with real paused processes: see RELIABILITY.md.

// An example shows what happens by printing it.
#![allow(clippy::print_stdout)]

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use distlock::LockError;

/// The protected resource: a key-value store that fences writes.
#[derive(Default)]
struct FencedStore {
    /// Per key: the highest token seen, and the value.
    entries: Mutex<HashMap<String, (u64, String)>>,
}

impl FencedStore {
    /// Applies the write only if `token` is at least the highest seen for
    /// `key` (equal: the same holder writing again).
    fn write(&self, key: &str, token: u64, value: &str) -> Result<(), String> {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let entry = entries.entry(key.to_owned()).or_insert((0, String::new()));
        if token < entry.0 {
            return Err(format!("stale token {token}: {key} was already written with token {}", entry.0));
        }
        *entry = (token, value.to_owned());
        Ok(())
    }
}

#[tokio::main]
async fn main() -> Result<(), LockError> {
    let store = FencedStore::default();
    let (alice, bob) = (distlock::connect("mem://fenced").await?, distlock::connect("mem://fenced").await?);
    let ttl = Duration::from_millis(500);

    // Alice holds the lock; her renewals stop with the rest of her process.
    let held = alice.lock("report").ttl(ttl).auto_renew(false).acquire().await?;
    let alice_token = held.token().get();
    assert!(!held.is_lost(), "just granted");
    println!("alice: granted token {alice_token}, checked the lock, about to write ... and pauses");

    // The pause: longer than the TTL. Meanwhile the lock expires and Bob,
    // who asked for it, is granted it with a greater token and writes.
    let bob_writes = async {
        let guard = bob.lock("report").ttl(ttl).acquire().await?;
        let token = guard.token().get();
        let written = store.write("report", token, "bob's numbers");
        println!("bob:   granted token {token}, wrote: {written:?}");
        guard.release().await
    };
    let ((), bob_done) = tokio::join!(tokio::time::sleep(ttl * 3), bob_writes);
    bob_done?;

    // Alice wakes up and writes what she was about to: the store refuses it.
    let late = store.write("report", alice_token, "alice's numbers");
    println!("alice: woke up, wrote with token {alice_token}: {late:?}");
    assert!(late.is_err(), "a stale write was accepted");
    // Had she looked first, the guard would have told her.
    println!("alice: is_lost() = {} (her own clock says so, with no server asked)", held.is_lost());
    match held.release().await {
        Err(LockError::Lost { .. }) => println!("alice: release says the lock was lost, as it was"),
        other => println!("alice: release: {other:?}"),
    }
    Ok(())
}
