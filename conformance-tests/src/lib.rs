//! The conformance suite every distlock backend must pass, against the real
//! service.
//!
//! The cases in [`cases`] are written once against the
//! [`DistributedLock`](lock_core::DistributedLock) contract. A backend
//! provides a [`Harness`] (make a client; break a lock, a session or a
//! connection from outside; count what is left on the service) and
//! instantiates every case as its own test with [`conformance_suite!`]:
//!
//! ```ignore
//! conformance_tests::conformance_suite!(memory, conformance_tests::memory::MemoryHarness::new());
//! ```
//!
//! which yields tests named `memory::acquire_release_round_trip`, ... A
//! harness whose service cannot be reached panics with instructions for
//! starting it, so a missing service fails the suite instead of passing it.

pub mod cases;
pub mod cluster;
#[cfg(feature = "consul")]
pub mod consul;
#[cfg(feature = "etcd")]
pub mod etcd;
pub mod failover;
pub mod file;
mod harness;
pub mod memory;
pub mod pki;
pub mod process;
pub mod proxy;
#[cfg(feature = "zk")]
pub mod zk;

pub use harness::{ClientControl, Harness, Namespace, TestClient};

/// Instantiates every case as its own `#[tokio::test]` in module `$name`,
/// with the harness built by `$harness` (an expression, evaluated per test).
///
/// Each test fails if its case runs longer than [`CASE_LIMIT`].
#[macro_export]
macro_rules! conformance_suite {
    ($name:ident, $harness:expr) => {
        $crate::__conformance_cases!($name, $harness;
            acquire_release_round_trip,
            mutual_exclusion_across_clients,
            mutual_exclusion_within_one_client,
            try_acquire_on_held_key_fails_fast,
            acquire_deadline_times_out_and_leaves_nothing,
            cancelled_acquire_leaves_no_ghost,
            cancel_racing_release_leaves_no_ghost,
            release_wakes_waiter,
            fencing_tokens_strictly_increase,
            renewal_keeps_lock_past_ttl,
            unrenewed_lock_expires,
            killed_holder_process_frees_lock,
            lock_broken_from_outside_is_reported_lost,
            waiter_with_ended_session_fails_with_lost,
            cut_off_holder_reports_loss_before_regrant,
            double_release_is_an_error,
            keys_are_independent,
            invalid_input_rejected_before_network,
            one_client_holds_many_locks,
            waiters_served_in_order,
            waiter_giving_up_ahead_lets_no_one_in,
            unreachable_endpoint_is_unavailable,
            waiter_timing_out_while_cut_off_leaves_nothing,
            acquire_cancelled_while_replies_are_lost_leaves_nothing
        );
    };
}

/// Instantiates the reader/writer cases (module `$name`) for a backend that
/// grants [`LockMode::Read`](lock_core::LockMode::Read) and
/// [`LockMode::Write`](lock_core::LockMode::Write).
#[macro_export]
macro_rules! reader_writer_suite {
    ($name:ident, $harness:expr) => {
        $crate::__conformance_cases!($name, $harness;
            readers_share_across_clients,
            writer_excludes_readers_and_writers,
            waiting_writer_holds_back_later_readers,
            readers_and_writers_contend,
            both_modes_on_one_client,
            silent_reader_and_writer_expire,
            abandoned_waits_leave_nothing_in_both_modes
        );
    };
}

/// Instantiates the semaphore cases (module `$name`) for a backend that
/// grants [`LockMode::Semaphore`](lock_core::LockMode::Semaphore).
#[macro_export]
macro_rules! semaphore_suite {
    ($name:ident, $harness:expr) => {
        $crate::__conformance_cases!($name, $harness;
            semaphore_admits_up_to_its_limit,
            semaphore_limit_holds_under_contention,
            semaphore_limits_must_agree,
            semaphore_places_come_back
        );
    };
}

/// Instantiates the leader election cases (module `$name`) for a backend
/// that publishes values ([`LockOptions::value`](lock_core::LockOptions::value)).
#[macro_export]
macro_rules! election_suite {
    ($name:ident, $harness:expr) => {
        $crate::__conformance_cases!($name, $harness;
            leader_is_published_and_observed,
            proclaimed_value_replaces_the_old
        );
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_cases {
    ($name:ident, $harness:expr; $($case:ident),*) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            $(
                #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let harness: ::std::sync::Arc<dyn $crate::Harness> = ::std::sync::Arc::new($harness);
                    $crate::run_case(stringify!($case), $crate::cases::$case(harness)).await;
                }
            )*
        }
    };
}

/// Where `scripts/services` keeps binaries and run state:
/// `$DISTLOCK_SERVICES_DIR`, by default `.services` in the checkout.
pub fn services_dir() -> std::path::PathBuf {
    std::env::var_os("DISTLOCK_SERVICES_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../.services"))
}

/// The longest one case may run before it fails as hung.
pub const CASE_LIMIT: std::time::Duration = std::time::Duration::from_secs(180);

/// Runs one case, failing it when it exceeds [`CASE_LIMIT`].
pub async fn run_case(name: &str, case: impl std::future::Future<Output = ()>) {
    if tokio::time::timeout(CASE_LIMIT, case).await.is_err() {
        panic!("case {name} hung: no result within {CASE_LIMIT:?}");
    }
}
