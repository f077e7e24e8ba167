//! The HTTP client of the command line.

use std::path::PathBuf;

use anyhow::Context;

use super::ApiArgs;

/// The hub could not be reached at all (exit 69).
#[derive(Debug, thiserror::Error)]
#[error("cannot reach the hub at {url}: {reason}")]
pub struct Unreachable {
    pub url: String,
    pub reason: String,
}

#[derive(Debug, Clone)]
pub struct ApiClient {
    pub base: String,
    token: String,
    pub http: reqwest::Client,
}

/// Files `serve` leaves in the data directory for the command line.
pub const URL_FILE: &str = "hub-url";

/// The hub's data directory: the flag, `MORAG_HUB_DATA`, or `./morag-hub`.
pub fn data_dir(flag: Option<PathBuf>) -> PathBuf {
    flag.or_else(|| std::env::var("MORAG_HUB_DATA").ok().map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("morag-hub"))
}

/// The hub's URL: the flag, `MORAG_HUB_URL`, or what `serve` wrote in the data directory.
pub fn base_url(flag: Option<String>, data: Option<PathBuf>) -> anyhow::Result<String> {
    if let Some(u) = flag.or_else(|| std::env::var("MORAG_HUB_URL").ok()) {
        return Ok(u);
    }
    let dir = data_dir(data);
    std::fs::read_to_string(dir.join(URL_FILE))
        .map(|s| s.trim().to_string())
        .with_context(|| {
            format!(
                "no hub URL: pass --url or set MORAG_HUB_URL (or run where the hub's data directory {} is)",
                dir.display()
            )
        })
}

impl ApiClient {
    pub fn new(base: &str, token: &str) -> Self {
        Self {
            base: base.trim_end_matches('/').to_string(),
            token: token.to_string(),
            http: reqwest::Client::new(),
        }
    }

    /// `--url`/`--token`, then `MORAG_HUB_URL`/`MORAG_HUB_TOKEN`, then the data directory.
    pub fn from_args(args: &ApiArgs) -> anyhow::Result<Self> {
        let dir = data_dir(args.data.clone());
        let url = base_url(args.url.clone(), Some(dir.clone()))?;
        let token = match args.token.clone().or_else(|| std::env::var("MORAG_HUB_TOKEN").ok()) {
            Some(t) => t,
            None => std::fs::read_to_string(dir.join("api-token"))
                .map(|s| s.trim().to_string())
                .with_context(|| {
                    format!(
                        "no API token: pass --token or set MORAG_HUB_TOKEN (or run where the hub's data directory {} is)",
                        dir.display()
                    )
                })?,
        };
        Ok(Self::new(&url, &token))
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn auth(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        req.bearer_auth(&self.token)
    }

    /// Send and turn the answer into JSON, or an error with the API's message.
    pub async fn send(&self, req: reqwest::RequestBuilder) -> anyhow::Result<serde_json::Value> {
        let resp = self.auth(req).send().await.map_err(|e| {
            let mut reason = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                reason = format!("{reason}: {s}");
                source = s.source();
            }
            Unreachable {
                url: self.base.clone(),
                reason,
            }
        })?;
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        let body: serde_json::Value =
            serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text.clone()));
        if !status.is_success() {
            let msg = body["error"].as_str().map(str::to_string).unwrap_or(text);
            anyhow::bail!("{status}: {msg}");
        }
        Ok(body)
    }

    pub async fn get_json(
        &self,
        path: &str,
        query: &[(String, String)],
    ) -> anyhow::Result<serde_json::Value> {
        self.send(self.http.get(self.url(path)).query(query)).await
    }

    pub async fn post_json(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> anyhow::Result<serde_json::Value> {
        self.send(self.http.post(self.url(path)).json(body)).await
    }
}
