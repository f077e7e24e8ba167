//! Files between peers: verified, resumable transfer (`transfer`: the sending and receiving
//! sides), the store received content lands in (`store`: partial and complete files by hash),
//! the application's view of a store directory (`content_store`: [`ContentStore`]), and the
//! manifests of files already hashed (`manifest_cache`); `piece_io`: reading a source in pieces
//! and writing verified pieces past the page cache.

pub(crate) mod content_store;
pub(crate) mod manifest_cache;
pub(crate) mod piece_io;
pub(crate) mod store;
pub(crate) mod transfer;

pub use content_store::{ContentStore, GcReport};
pub use transfer::{Transfer, TransferOutcome, TransferProgress};
