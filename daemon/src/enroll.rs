//! Join tokens: `morag-hub token create` stores a single-use, expiring token (only the hash of
//! its secret) and prints it with what the agent needs to find and verify the hub.

use std::time::Duration;

use anyhow::Context;

use crate::config::HubConfig;

/// The file in the data directory holding the address agents dial (written by `serve`).
pub const ADVERTISE_FILE: &str = "advertise";

/// A join token as printed.
#[derive(Debug)]
pub struct CreatedToken {
    text: String,
    hub: String,
}

impl CreatedToken {
    pub fn hub(&self) -> &str {
        &self.hub
    }
}

impl std::fmt::Display for CreatedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

/// Make and store a single-use join token.
pub async fn create_token(
    config: &HubConfig,
    ttl: Duration,
    hub: Option<&str>,
) -> anyhow::Result<CreatedToken> {
    let _ = (config, ttl, hub);
    anyhow::bail!("join tokens are not wired yet")
}
