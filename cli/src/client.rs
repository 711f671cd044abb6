//! The controller's HTTP API: GETs, and the token-guarded task writes. Every error names the
//! controller and, for an HTTP error, carries the controller's own `{"error"}` message.

use std::{path::Path, time::Duration};

use anyhow::{Context as _, anyhow};
use reqwest::{Method, StatusCode};
use serde_json::Value;

/// One controller.
pub struct Client {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

/// A response the controller refused; `status` lets callers treat a 404 as "not yet".
#[derive(Debug)]
pub struct HttpError {
    pub status: StatusCode,
    pub message: String,
}

impl std::fmt::Display for HttpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.message)
    }
}

impl std::error::Error for HttpError {}

impl Client {
    /// `token_file` wins over `MESHDOCTOR_TOKEN`; neither is needed for reads.
    pub fn new(base: &str, token_file: Option<&Path>) -> anyhow::Result<Self> {
        let token = match token_file {
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .with_context(|| format!("reading the token file {}", path.display()))?
                    .trim()
                    .to_string(),
            ),
            None => std::env::var("MESHDOCTOR_TOKEN")
                .ok()
                .map(|t| t.trim().to_string())
                .filter(|t| !t.is_empty()),
        };
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(15))
            .build()
            .context("building the HTTP client")?;
        Ok(Self {
            base: base.trim_end_matches('/').to_string(),
            token,
            http,
        })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// Sends one request; `Ok((status, body))` for a 2xx answer.
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<(StatusCode, String)> {
        let url = format!("{}{path}", self.base);
        let mut req = self.http.request(method.clone(), &url);
        if let Some(token) = &self.token {
            req = req.bearer_auth(token);
        }
        if let Some(body) = body {
            req = req.json(body);
        }
        let resp = req.send().await.map_err(|e| {
            anyhow!(
                "cannot reach the controller at {}: {} (is it running? --controller / \
                 MESHDOCTOR_CONTROLLER)",
                self.base,
                cause(&e)
            )
        })?;
        let status = resp.status();
        let text = resp
            .text()
            .await
            .with_context(|| format!("reading the answer to {method} {url}"))?;
        if !status.is_success() {
            let said = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_string))
                .unwrap_or_else(|| text.trim().to_string());
            let hint = if status == StatusCode::UNAUTHORIZED {
                " (give the API token: --token-file or MESHDOCTOR_TOKEN)"
            } else {
                ""
            };
            return Err(HttpError {
                status,
                message: format!("{method} {url}: HTTP {status}: {said}{hint}"),
            }
            .into());
        }
        Ok((status, text))
    }

    /// GETs `path` and parses the JSON answer.
    pub async fn get(&self, path: &str) -> anyhow::Result<Value> {
        let (_, text) = self.send(Method::GET, path, None).await?;
        serde_json::from_str(&text)
            .with_context(|| format!("{}{path}: the controller's answer is not JSON", self.base))
    }

    /// PUTs a task document; the answer is the task view.
    pub async fn put_task(&self, name: &str, task: &Value) -> anyhow::Result<Value> {
        let path = format!("/v1/tasks/{name}");
        let (_, text) = self.send(Method::PUT, &path, Some(task)).await?;
        Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// Deletes a task; `Ok(false)` when there was no such task.
    pub async fn delete_task(&self, name: &str) -> anyhow::Result<bool> {
        match self
            .send(Method::DELETE, &format!("/v1/tasks/{name}"), None)
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if status_of(&e) == Some(StatusCode::NOT_FOUND) => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// The HTTP status of a refused request, if that is what `e` is.
pub fn status_of(e: &anyhow::Error) -> Option<StatusCode> {
    e.downcast_ref::<HttpError>().map(|h| h.status)
}

/// The innermost cause of a transport error: "Connection refused (os error 111)" rather than
/// reqwest's "error sending request".
fn cause(e: &reqwest::Error) -> String {
    let mut source: &dyn std::error::Error = e;
    while let Some(next) = source.source() {
        source = next;
    }
    if e.is_timeout() {
        return "timed out".into();
    }
    source.to_string()
}
