//! The conformance suite on the local file backend.

conformance_tests::conformance_suite!(
    file,
    conformance_tests::file::FileHarness::new().with_holder_binary(env!("CARGO_BIN_EXE_conformance-holder"))
);
conformance_tests::reader_writer_suite!(file_rw, conformance_tests::file::FileHarness::new());
conformance_tests::semaphore_suite!(file_semaphore, conformance_tests::file::FileHarness::new());
conformance_tests::election_suite!(file_election, conformance_tests::file::FileHarness::new());
