//! Cancellation, shared by every floor of the agent: the job runner cancels, processors and
//! models poll.

/// Cancellation signal shared with the caller; processors poll `is_cancelled()`.
pub type Cancel = tokio_util::sync::CancellationToken;

/// The work was cancelled (the one error of work that otherwise records what it could not do).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("cancelled")]
pub struct Cancelled;
