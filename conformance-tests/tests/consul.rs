//! The conformance suite on the Consul backend, against a real Consul agent
//! (`scripts/services start consul`; address from `DISTLOCK_CONSUL_ADDR`).
#![cfg(feature = "consul")]

conformance_tests::conformance_suite!(
    consul,
    conformance_tests::consul::ConsulHarness::from_env().with_holder_binary(env!("CARGO_BIN_EXE_conformance-holder"))
);

conformance_tests::reader_writer_suite!(
    consul_rw,
    conformance_tests::consul::ConsulHarness::from_env().with_holder_binary(env!("CARGO_BIN_EXE_conformance-holder"))
);

conformance_tests::semaphore_suite!(
    consul_semaphore,
    conformance_tests::consul::ConsulHarness::from_env().with_holder_binary(env!("CARGO_BIN_EXE_conformance-holder"))
);

conformance_tests::election_suite!(
    consul_election,
    conformance_tests::consul::ConsulHarness::from_env().with_holder_binary(env!("CARGO_BIN_EXE_conformance-holder"))
);
