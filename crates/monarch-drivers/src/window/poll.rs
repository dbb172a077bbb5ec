//! [`Poll`]: the outcome of reading a peer's message block.

use monarch_proto::window::msg::RegisterError;

/// Outcome of reading a peer's message block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Poll<T> {
    /// Nothing new since the last message taken.
    Nothing,
    /// A new, complete message with its sequence number.
    Message(u32, T),
    /// A new message that does not decode, with its sequence number.
    Garbage(u32, RegisterError),
}
