//! The conformance cases: plain async functions, written once against the
//! trait, that panic with the backend's name and the failed step.
//!
//! Every case takes the harness as `Arc<dyn Harness>`, makes its own random
//! namespace, and checks that the service is left clean.

mod basic;
mod election;
mod exclusion;
mod expiry;
mod faults;
mod loss;
mod reader_writer;
mod semaphore;
mod support;
mod waiting;

pub use basic::*;
pub use election::*;
pub use exclusion::*;
pub use expiry::*;
pub use faults::*;
pub use loss::*;
pub use reader_writer::*;
pub use semaphore::*;
pub use waiting::*;
