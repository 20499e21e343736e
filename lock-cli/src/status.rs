//! `distlock status`: who holds a lock.

use std::time::SystemTime;

use crate::cli::{StatusArgs, backend_url};
use crate::exit;

/// Runs `distlock status`; returns the process exit code.
pub async fn run(args: StatusArgs) -> u8 {
    let key = &args.target.key;
    let holder = match distlock::connect(&backend_url(&args.target)).await {
        Ok(locks) => locks.inspect(key).await,
        Err(error) => Err(error),
    };
    let holder = match holder {
        Ok(holder) => holder,
        Err(error) => {
            eprintln!("distlock: {error}");
            return exit::for_error(&error);
        }
    };
    let held_for = holder
        .as_ref()
        .and_then(|h| h.held_since)
        .and_then(|since| SystemTime::now().duration_since(since).ok())
        .map(|held| held.as_secs());
    if args.json {
        let value = match &holder {
            Some(h) => serde_json::json!({
                "key": key, "held": true, "owner": h.owner, "token": h.token.get(), "held_for_s": held_for,
            }),
            None => serde_json::json!({ "key": key, "held": false }),
        };
        println!("{value}");
    } else {
        match holder {
            Some(h) => {
                let held = held_for.map(|s| format!(", held for {s}s")).unwrap_or_default();
                println!("{key}: held by {} with fencing token {}{held}", h.owner, h.token);
            }
            None => println!("{key}: free"),
        }
    }
    0
}
