//! The conformance suite on the in-memory reference backend.

conformance_tests::conformance_suite!(memory, conformance_tests::memory::MemoryHarness::new());
