//! The agent's side of the controller API: register, long-poll round plans, post reports.

use std::time::Duration;

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

pub struct ControllerClient {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

/// How long one plan poll waits on the controller when there is nothing new.
pub const POLL_WAIT: Duration = Duration::from_secs(25);

impl ControllerClient {
    pub fn new(base: &str, token: Option<String>) -> Result<Self, ClientError> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(POLL_WAIT + Duration::from_secs(10))
            .build()
            .map_err(|source| ClientError::Http {
                url: base.into(),
                source,
            })?;
        Ok(Self {
            http,
            base: base.trim_end_matches('/').into(),
            token,
        })
    }

    fn auth(&self, rb: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.token {
            Some(t) => rb.bearer_auth(t),
            None => rb,
        }
    }

    async fn send(
        &self,
        url: String,
        rb: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, ClientError> {
        let resp = self
            .auth(rb)
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

    pub async fn report(&self, report: &AgentReport) -> Result<(), ClientError> {
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
            .body(body);
        self.send(url.clone(), request).await?;
        Ok(())
    }
}
