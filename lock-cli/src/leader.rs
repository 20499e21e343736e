//! `distlock leader`: who leads an election, once or as it changes.

use distlock::LockInfo;
use futures_util::StreamExt;

use crate::cli::{LeaderArgs, backend_url};
use crate::exit;

/// Runs `distlock leader`; returns the process exit code.
pub async fn run(args: LeaderArgs) -> u8 {
    let key = &args.target.key;
    let locks = match distlock::connect(&backend_url(&args.target)).await {
        Ok(locks) => locks,
        Err(error) => {
            eprintln!("distlock: {error}");
            return exit::for_error(&error);
        }
    };
    if !args.watch {
        return match locks.leader(key).await {
            Ok(leader) => {
                print(key, leader.as_ref(), args.json);
                0
            }
            Err(error) => {
                eprintln!("distlock: {error}");
                exit::for_error(&error)
            }
        };
    }
    let mut leaders = match locks.observe(key) {
        Ok(leaders) => leaders,
        Err(error) => {
            eprintln!("distlock: {error}");
            return exit::for_error(&error);
        }
    };
    let interrupted = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    tokio::pin!(interrupted);
    loop {
        tokio::select! {
            () = &mut interrupted => return 0,
            next = leaders.next() => match next {
                Some(Ok(leader)) => print(key, leader.as_ref(), args.json),
                // The stream goes on after an error: say it, keep watching.
                Some(Err(error)) => eprintln!("distlock: {error} (still watching)"),
                None => return exit::UNAVAILABLE,
            },
        }
    }
}

fn print(key: &str, leader: Option<&LockInfo>, json: bool) {
    if json {
        let line = match leader {
            Some(l) => serde_json::json!({
                "key": key, "leader": true, "value": l.value, "owner": l.owner, "token": l.token.get(),
            }),
            None => serde_json::json!({ "key": key, "leader": false }),
        };
        println!("{line}");
        return;
    }
    match leader {
        Some(l) => println!("{key}: {} (fencing token {})", l.value.as_deref().unwrap_or(&l.owner), l.token),
        None => println!("{key}: none"),
    }
}
