//! The conformance suite on the in-memory reference backend.

conformance_tests::conformance_suite!(memory, conformance_tests::memory::MemoryHarness::new());
conformance_tests::reader_writer_suite!(memory_rw, conformance_tests::memory::MemoryHarness::new());
conformance_tests::semaphore_suite!(memory_semaphore, conformance_tests::memory::MemoryHarness::new());
conformance_tests::election_suite!(memory_election, conformance_tests::memory::MemoryHarness::new());
