//! The conformance suite on the ZooKeeper backend, against a real ZooKeeper
//! (`scripts/services start zk`; hosts from `DISTLOCK_ZK_HOSTS`): the mutex
//! cases, the reader/writer cases, the semaphore cases and the leader
//! election cases.
#![cfg(feature = "zk")]

conformance_tests::conformance_suite!(
    zk,
    conformance_tests::zk::ZkHarness::from_env().with_holder_binary(env!("CARGO_BIN_EXE_conformance-holder"))
);

conformance_tests::reader_writer_suite!(
    zk_rw,
    conformance_tests::zk::ZkHarness::from_env().with_holder_binary(env!("CARGO_BIN_EXE_conformance-holder"))
);

conformance_tests::semaphore_suite!(
    zk_semaphore,
    conformance_tests::zk::ZkHarness::from_env().with_holder_binary(env!("CARGO_BIN_EXE_conformance-holder"))
);

conformance_tests::election_suite!(
    zk_election,
    conformance_tests::zk::ZkHarness::from_env().with_holder_binary(env!("CARGO_BIN_EXE_conformance-holder"))
);
