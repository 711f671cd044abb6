//! The agent's side of the controller API: register, long-poll round plans, post reports.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use meshdoctor_api::{
    AgentRegistration, AgentReport, RoundPlan,
    agent_report::{REPORT_CONTENT_TYPE, encode_report},
    routes::{self, PlansQuery},
};
use reqwest::StatusCode;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The controller could not be reached or the connection broke.
    #[error("controller {url}: {source}")]
    Http {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    /// The client's settings are wrong (the CA file).
    #[error("controller client: {0}")]
    Setup(#[from] meshdoctor_ops::tls::TlsError),
    /// The credential file could not be read.
    #[error("agent credential: {0}")]
    Credential(#[from] meshdoctor_ops::credential::CredentialError),
    /// The report could not be encoded (it does not happen with reports the agent builds).
    #[error("cannot encode the report: {0}")]
    Encode(#[source] meshdoctor_api::agent_report::ReportBodyError),
    /// The controller does not know this agent (it restarted): register again.
    #[error("controller does not know this agent")]
    NotRegistered,
    /// The controller answered with an error status.
    #[error("controller {url}: HTTP {status}: {body}")]
    Status {
        url: String,
        status: StatusCode,
        body: String,
    },
}

impl ClientError {
    /// Whether asking again cannot help: the controller refused the request itself (a round
    /// it no longer has open, a report it will not take), not a passing condition (a timeout,
    /// throttling, its own error, no connection).
    pub fn is_final(&self) -> bool {
        matches!(self, Self::Encode(_) | Self::Setup(_))
            || matches!(self, Self::Status { status, .. }
                if status.is_client_error()
                    && *status != StatusCode::REQUEST_TIMEOUT
                    && *status != StatusCode::TOO_MANY_REQUESTS)
    }
}

pub struct ControllerClient {
    http: reqwest::Client,
    base: String,
    /// Read for every request: the kubelet rotates a projected token in place.
    token_file: Option<PathBuf>,
}

/// How long one plan poll waits on the controller when there is nothing new.
pub const POLL_WAIT: Duration = Duration::from_secs(25);

impl ControllerClient {
    /// A client of the controller at `base`, presenting the credential in `token_file` and,
    /// with `ca`, trusting only the controller certificates that CA signed.
    pub fn new(
        base: &str,
        token_file: Option<PathBuf>,
        ca: Option<&Path>,
    ) -> Result<Self, ClientError> {
        let mut builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(POLL_WAIT + Duration::from_secs(10));
        if let Some(ca) = ca {
            builder = meshdoctor_ops::tls::trusting(builder, ca)?;
        }
        let http = builder.build().map_err(|source| ClientError::Http {
            url: base.into(),
            source,
        })?;
        if let Some(file) = &token_file {
            meshdoctor_ops::credential::read_token(file)?;
        }
        Ok(Self {
            http,
            base: base.trim_end_matches('/').into(),
            token_file,
        })
    }

    fn auth(&self, rb: reqwest::RequestBuilder) -> Result<reqwest::RequestBuilder, ClientError> {
        Ok(match &self.token_file {
            Some(file) => rb.bearer_auth(meshdoctor_ops::credential::read_token(file)?),
            None => rb,
        })
    }

    async fn send(
        &self,
        url: String,
        rb: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, ClientError> {
        let resp = self
            .auth(rb)?
            .send()
            .await
            .map_err(|source| ClientError::Http {
                url: url.clone(),
                source,
            })?;
        match resp.status() {
            s if s.is_success() => Ok(resp),
            StatusCode::NOT_FOUND if url.contains("/plans") => Err(ClientError::NotRegistered),
            status => Err(ClientError::Status {
                url,
                status,
                body: resp.text().await.unwrap_or_default(),
            }),
        }
    }

    pub async fn register(&self, reg: &AgentRegistration) -> Result<(), ClientError> {
        let url = format!("{}{}", self.base, routes::AGENTS);
        self.send(url.clone(), self.http.post(&url).json(reg))
            .await?;
        Ok(())
    }

    /// Plans with a round tag above `after`, waiting up to [`POLL_WAIT`] for one.
    pub async fn plans(&self, node: &str, after: u32) -> Result<Vec<RoundPlan>, ClientError> {
        let query = PlansQuery {
            after,
            wait_ms: POLL_WAIT.as_millis() as u64,
        };
        let url = format!("{}{}", self.base, routes::agent_plans(node, &query));
        let resp = self.send(url.clone(), self.http.get(&url)).await?;
        resp.json()
            .await
            .map_err(|source| ClientError::Http { url, source })
    }

    /// Posts a round report, giving up after `timeout` (the caller retries within the round's
    /// deadline).
    pub async fn report(&self, report: &AgentReport, timeout: Duration) -> Result<(), ClientError> {
        let url = format!(
            "{}{}",
            self.base,
            routes::agent_report(&report.node, report.round_tag)
        );
        let body = encode_report(report).map_err(ClientError::Encode)?;
        let request = self
            .http
            .post(&url)
            .header(reqwest::header::CONTENT_TYPE, REPORT_CONTENT_TYPE)
            .timeout(timeout)
            .body(body);
        self.send(url.clone(), request).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_refusal_is_final() {
        let status = |code: u16| ClientError::Status {
            url: "http://controller/v1/agents/n/reports/1".into(),
            status: StatusCode::from_u16(code).unwrap(),
            body: String::new(),
        };
        for code in [400, 401, 404, 413, 415] {
            assert!(status(code).is_final(), "{code}");
        }
        for code in [408, 429, 500, 502, 503] {
            assert!(!status(code).is_final(), "{code}");
        }
        assert!(!ClientError::NotRegistered.is_final());
    }
}
