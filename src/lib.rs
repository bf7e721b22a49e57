//! pagetier: a FUSE filesystem prototyping a page-cache extension with a
//! read-only device tier. See README.md for the model and the interfaces.
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod cli;
pub mod control;
pub mod creds;
pub mod errno;
pub mod fs;
pub mod fuse;
pub mod inode;
pub mod lock;
pub mod metrics;
pub mod notify;
pub mod run;
pub mod stats;
pub mod storage;
pub mod tier;
pub mod tools;
pub mod top;
pub mod watch;
