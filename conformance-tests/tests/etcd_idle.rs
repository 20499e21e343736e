//! Waiting on etcd is event-driven: while nothing changes, holders, waiters
//! of every kind and leader observers send etcd no reads or writes at all
//! (only the lease's keep-alives), counted on a private etcd's own metrics.
#![cfg(feature = "etcd")]

use std::time::Duration;

use conformance_tests::etcd::{EtcdHarness, start_private_etcd};
use futures_util::StreamExt;
use lock_core::Locks;
use lock_etcd::{EtcdConfig, EtcdLock};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::{Instant, sleep, timeout};

/// A client of the private etcd, once it answers.
async fn connect(config: &EtcdConfig) -> Locks {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let attempt = match EtcdLock::connect(config.clone()).await {
            Ok(lock) => {
                let locks = Locks::new(lock);
                locks.inspect("probe").await.map(|_| locks)
            }
            Err(error) => Err(error),
        };
        match attempt {
            Ok(locks) => return locks,
            Err(error) if Instant::now() > deadline => panic!("the private etcd never answered: {error}"),
            Err(_) => sleep(Duration::from_millis(200)).await,
        }
    }
}

/// How many KV requests (range, put, delete, txn, compact) the etcd at
/// `endpoint` has started, from its Prometheus metrics.
async fn kv_requests(endpoint: &str) -> u64 {
    let address = endpoint.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap_or_else(|e| panic!("metrics: {e}"));
    let request = format!("GET /metrics HTTP/1.0\r\nHost: {address}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap_or_else(|e| panic!("metrics: {e}"));
    let mut body = String::new();
    stream.read_to_string(&mut body).await.unwrap_or_else(|e| panic!("metrics: {e}"));
    body.lines()
        .filter(|line| line.starts_with("grpc_server_started_total{") && line.contains("etcdserverpb.KV"))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|count| count as u64)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_and_observing_send_nothing_while_nothing_changes() {
    let (_etcd, endpoint) = start_private_etcd("etcd-idle");
    let config = EtcdHarness::from_env().config(&endpoint);
    let (holder, waiter, observer) = (connect(&config).await, connect(&config).await, connect(&config).await);
    let mutex = holder.lock("mutex").try_acquire().await.ok().flatten();
    let mutex = mutex.unwrap_or_else(|| panic!("could not take a free mutex"));
    let place = holder.semaphore("places", 1).try_acquire().await.ok().flatten();
    let place = place.unwrap_or_else(|| panic!("could not take a free place"));
    let leader = holder.lock("election").value("v1").try_acquire().await.ok().flatten();
    let leader = leader.unwrap_or_else(|| panic!("could not lead a free election"));
    let waiting = {
        let waiter = waiter.clone();
        tokio::spawn(async move {
            let (mutex, place) = tokio::join!(waiter.lock("mutex").acquire(), waiter.semaphore("places", 1).acquire());
            let granted = mutex.is_ok() && place.is_ok();
            for guard in [mutex, place].into_iter().flatten() {
                let _ = guard.release().await;
            }
            granted
        })
    };
    let reading = {
        let reader = observer.clone();
        tokio::spawn(async move { reader.read_lock("mutex").acquire().await.is_ok() })
    };
    let mut leaders = observer.observe("election").unwrap_or_else(|e| panic!("observe: {e}"));
    let first = timeout(Duration::from_secs(5), leaders.next()).await.ok().flatten();
    let first = first.and_then(Result::ok).flatten().and_then(|leader| leader.value);
    assert_eq!(first.as_deref(), Some("v1"), "the observer's first leader");

    // Let every waiter queue and settle on its watch.
    sleep(Duration::from_secs(1)).await;
    let before = kv_requests(&endpoint).await;
    sleep(Duration::from_secs(2)).await;
    let idle = kv_requests(&endpoint).await - before;
    assert!(idle <= 2, "{idle} KV requests in 2 s while nothing changed: someone polls");

    // And every one of them still sees the changes.
    leader.proclaim("v2").await.unwrap_or_else(|e| panic!("proclaim: {e}"));
    let next = timeout(Duration::from_secs(5), leaders.next()).await.ok().flatten();
    let next = next.and_then(Result::ok).flatten().and_then(|leader| leader.value);
    assert_eq!(next.as_deref(), Some("v2"), "the observer saw the proclaimed value");
    for guard in [mutex, place, leader] {
        guard.release().await.unwrap_or_else(|e| panic!("release: {e}"));
    }
    for (task, what) in [(waiting, "the mutex and semaphore waiters"), (reading, "the reader")] {
        let granted = timeout(Duration::from_secs(10), task).await;
        let granted = granted.unwrap_or_else(|_| panic!("{what} were not granted within 10 s of the releases"));
        assert_eq!(granted.ok(), Some(true), "{what} granted");
    }
}
