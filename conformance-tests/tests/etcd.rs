//! The conformance suite and its reader/writer, semaphore and election cases
//! on the etcd backend, against a real etcd (`scripts/services start etcd`;
//! endpoints from `DISTLOCK_ETCD_ENDPOINTS`).
#![cfg(feature = "etcd")]

conformance_tests::conformance_suite!(
    etcd,
    conformance_tests::etcd::EtcdHarness::from_env().with_holder_binary(env!("CARGO_BIN_EXE_conformance-holder"))
);

conformance_tests::reader_writer_suite!(
    etcd_rw,
    conformance_tests::etcd::EtcdHarness::from_env().with_holder_binary(env!("CARGO_BIN_EXE_conformance-holder"))
);

conformance_tests::semaphore_suite!(
    etcd_semaphore,
    conformance_tests::etcd::EtcdHarness::from_env().with_holder_binary(env!("CARGO_BIN_EXE_conformance-holder"))
);

conformance_tests::election_suite!(
    etcd_election,
    conformance_tests::etcd::EtcdHarness::from_env().with_holder_binary(env!("CARGO_BIN_EXE_conformance-holder"))
);
