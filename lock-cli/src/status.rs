//! `distlock status`: who holds a lock, in which mode.

use std::time::SystemTime;

use distlock::{LockInfo, LockMode};

use crate::cli::{StatusArgs, backend_url};
use crate::exit;

/// Runs `distlock status`; returns the process exit code.
pub async fn run(args: StatusArgs) -> u8 {
    let key = &args.target.key;
    let holders = match distlock::connect(&backend_url(&args.target)).await {
        Ok(locks) => locks.holders(key).await,
        Err(error) => Err(error),
    };
    let holders = match holders {
        Ok(holders) => holders,
        Err(error) => {
            eprintln!("distlock: {error}");
            return exit::for_error(&error);
        }
    };
    if args.json {
        println!("{}", json(key, &holders));
        return 0;
    }
    match holders.as_slice() {
        [] => println!("{key}: free"),
        [only] if !only.mode.is_shared() => {
            println!(
                "{key}: held by {} with fencing token {}{}{}",
                only.owner,
                only.token,
                held_for(only),
                value(only)
            );
        }
        shared => {
            println!("{key}: {} by {} holder{}", describe(shared[0].mode), shared.len(), plural(shared.len()));
            for holder in shared {
                println!("  {} with fencing token {}{}", holder.owner, holder.token, held_for(holder));
            }
        }
    }
    0
}

/// The status as one JSON object: `held`, the first holder's `owner`,
/// `token` and `held_for_s` (as before reader/writer locks), and `mode` and
/// every holder in `holders`.
pub fn json(key: &str, holders: &[LockInfo]) -> serde_json::Value {
    let Some(first) = holders.first() else { return serde_json::json!({ "key": key, "held": false }) };
    let listed: Vec<serde_json::Value> = holders
        .iter()
        .map(|h| {
            serde_json::json!({
                "owner": h.owner, "token": h.token.get(), "held_for_s": held_for_s(h), "value": h.value,
            })
        })
        .collect();
    serde_json::json!({
        "key": key, "held": true, "mode": first.mode.name(), "limit": first.mode.limit(),
        "owner": first.owner, "token": first.token.get(), "held_for_s": held_for_s(first), "value": first.value,
        "holders": listed,
    })
}

fn describe(mode: LockMode) -> String {
    match mode {
        LockMode::Read => "read-shared".to_owned(),
        other => format!("held as a {other}"),
    }
}

fn plural(count: usize) -> &'static str {
    if count == 1 { "" } else { "s" }
}

fn held_for_s(holder: &LockInfo) -> Option<u64> {
    holder.held_since.and_then(|since| SystemTime::now().duration_since(since).ok()).map(|held| held.as_secs())
}

fn held_for(holder: &LockInfo) -> String {
    held_for_s(holder).map(|s| format!(", held for {s}s")).unwrap_or_default()
}

fn value(holder: &LockInfo) -> String {
    holder.value.as_ref().filter(|v| **v != holder.owner).map(|v| format!(", publishing {v:?}")).unwrap_or_default()
}
