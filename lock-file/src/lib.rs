//! The local file backend of distlock: [`FileLock`], OS file locks in a
//! directory, for one machine and no server. It is the embedded default of
//! the `distlock` CLI.
//!
//! Key `K` is the file `{dir}/{K percent-encoded}.lock` (every byte outside
//! `[A-Za-z0-9_-]` as `%XX`; names too long for the file system become
//! `sha256-{hex}.lock`), so distinct keys never share a file.

mod layout;
mod lock;
mod record;

pub use lock::FileLock;
