//! placeholder
pub const ALPN_STR: &str = "morag/1";
