//! HTTP requests for AppHttpHealthy: kdoctor's target fields (host, method, header, body, http2,
//! TLS with a CA and a client certificate, expect.statusCode) on tokio and rustls: HTTP/1.1 by
//! [`crate::http1`], HTTP/2 by hyper 1.
//!
//! Why it is built this way:
//! - HTTP/1.1 is our own ([`crate::http1`]): the request serialized once, a stack of
//!   keep-alive connections (no more than requests in flight, so at most the runner's bound),
//!   each request driving its connection itself. HTTP/2 is hyper's connection-level API with a
//!   fixed pool of ours: one connection per [`H2_STREAMS_PER_CONN`] in-flight requests,
//!   negotiated with ALPN `h2` over TLS or by prior knowledge (h2c).
//! - TLS always verifies the server: against the task's CA when it gives one, else against the
//!   webpki roots (built in, so a scratch container needs no CA bundle). kdoctor skips
//!   verification without a CA, which makes a TLS probe blind to the failures it should find.
//! - A request that a connection never started (an HTTP/1.1 keep-alive connection the server
//!   closed, an HTTP/2 stream the server refused or a connection it is taking away) is retried
//!   once on a fresh connection: nginx closes a keep-alive connection after 1000 requests or
//!   75 s idle, and that is no failure of the target.
//! - Failures are labelled by kind (`connect`, `tls`, `reset`, `protocol`, `io`; the runner adds
//!   `timeout`) so a report says what broke, with the error chain as detail.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use bytes::Bytes;
use http::header::{HOST, HeaderMap, HeaderName, HeaderValue};
use http::uri::{PathAndQuery, Scheme};
use http::{Method, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::TlsConnector;

use crate::conn::{Connector, Template, TlsSetup, chain, find, io_kind};
pub use crate::conn::{HttpFailure, HttpReply};
use crate::http1::Http1;
use crate::{Outcome, Requester};

/// In-flight requests per HTTP/2 connection; nginx allows 128 concurrent streams by default.
pub const H2_STREAMS_PER_CONN: usize = 100;

/// Methods kdoctor's AppHttpHealthy accepts.
const METHODS: [&str; 8] = [
    "GET", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "PATCH", "HEAD",
];

/// What to request and what counts as success.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HttpTarget {
    /// `http://` or `https://` URL; without a scheme, `http://` is assumed (as kdoctor does).
    pub url: String,
    /// One of GET, POST, PUT, DELETE, CONNECT, OPTIONS, PATCH, HEAD (any case).
    pub method: String,
    /// Extra request headers; see [`parse_header`] for kdoctor's `"Key: Value"` form.
    pub headers: Vec<(String, String)>,
    pub body: Option<Bytes>,
    /// Speak HTTP/2: ALPN `h2` for https, prior knowledge (h2c) for http.
    pub http2: bool,
    /// TLS settings for an https URL; `None` verifies against the webpki roots.
    pub tls: Option<TlsConfig>,
    /// The status a reply must have to count as success; when unset, any 2xx or 3xx.
    pub expect_status: Option<u16>,
}

/// kdoctor's TLS secret: `ca.crt`, `tls.crt` and `tls.key`, all PEM.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsConfig {
    /// CA certificates the server must chain to, instead of the webpki roots.
    pub ca_pem: Option<Vec<u8>>,
    /// Client certificate chain (mTLS), with `client_key_pem`.
    pub client_cert_pem: Option<Vec<u8>>,
    pub client_key_pem: Option<Vec<u8>>,
}

/// A target that cannot be requested, naming the offending field.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HttpTargetError {
    #[error("host {url:?}: {reason}")]
    Url { url: String, reason: String },
    #[error("method {0:?}: not one of {METHODS:?}")]
    Method(String),
    #[error("header {header:?}: {reason}")]
    Header { header: String, reason: String },
    #[error("expect.statusCode {0}: not within 100..=599")]
    ExpectStatus(u16),
    #[error("tls: {0}")]
    Tls(String),
    #[error("tls ca.crt: {0}")]
    Ca(String),
    #[error("tls tls.crt/tls.key: {0}")]
    ClientCert(String),
}

/// Splits kdoctor's `"Key: Value"` header entry at the first `:` only, so a value that holds
/// `:` itself (a URL, a time) stays whole (kdoctor cuts it off).
pub fn parse_header(entry: &str) -> Result<(String, String), HttpTargetError> {
    let (name, value) = entry
        .split_once(':')
        .ok_or_else(|| HttpTargetError::Header {
            header: entry.to_owned(),
            reason: "no ':' between name and value".into(),
        })?;
    Ok((name.trim().to_owned(), value.trim().to_owned()))
}

/// Sends the target's request over a fixed pool of keep-alive connections.
pub struct HttpRequester {
    template: Template,
    connector: Connector,
    pool: Pool,
    /// Ids of HTTP/2 connections opened so far.
    h2_generation: AtomicU64,
    expect_status: Option<StatusCode>,
}

impl HttpRequester {
    /// Checks the target and prepares its request. `max_in_flight` sizes the pool: the number of
    /// HTTP/1.1 connections kept, or of HTTP/2 connections at [`H2_STREAMS_PER_CONN`] each.
    /// Nothing is connected until the first request.
    pub fn new(target: &HttpTarget, max_in_flight: usize) -> Result<Self, HttpTargetError> {
        let url = parse_url(&target.url)?;
        let method = parse_method(&target.method)?;
        let expect_status = target
            .expect_status
            .map(|code| {
                StatusCode::from_u16(code)
                    .ok()
                    .filter(|_| (100..=599).contains(&code))
                    .ok_or(HttpTargetError::ExpectStatus(code))
            })
            .transpose()?;
        let authority = url.authority().expect("checked by parse_url");
        let https = url.scheme() == Some(&Scheme::HTTPS);
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');

        let tls = match (https, &target.tls) {
            (false, Some(_)) => {
                return Err(HttpTargetError::Tls(format!(
                    "TLS settings given for the plain-HTTP url {:?}",
                    target.url
                )));
            }
            (false, None) => None,
            (true, tls) => Some(TlsSetup {
                connector: TlsConnector::from(Arc::new(tls_config(tls.as_ref(), target.http2)?)),
                name: ServerName::try_from(host.to_owned()).map_err(|e| HttpTargetError::Url {
                    url: target.url.clone(),
                    reason: format!("not a TLS server name: {e}"),
                })?,
            }),
        };

        let mut headers = HeaderMap::with_capacity(target.headers.len() + 1);
        for (name, value) in &target.headers {
            let bad = |reason: String| HttpTargetError::Header {
                header: format!("{name}: {value}"),
                reason,
            };
            let name = HeaderName::from_bytes(name.as_bytes()).map_err(|e| bad(e.to_string()))?;
            let value = HeaderValue::from_str(value).map_err(|e| bad(e.to_string()))?;
            headers.append(name, value);
        }
        // HTTP/1.1 needs Host (hyper's connection API adds none); HTTP/2 takes :authority from
        // the absolute URI.
        let uri = if target.http2 {
            url.clone()
        } else {
            if !headers.contains_key(HOST) {
                let value = HeaderValue::from_str(authority.as_str()).map_err(|e| {
                    HttpTargetError::Url {
                        url: target.url.clone(),
                        reason: e.to_string(),
                    }
                })?;
                headers.insert(HOST, value);
            }
            url.path_and_query()
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/"))
                .into()
        };

        let template = Template {
            method,
            uri,
            headers,
            body: target.body.clone().unwrap_or_default(),
        };
        let max_in_flight = max_in_flight.max(1);
        let pool = if target.http2 {
            let n = max_in_flight.div_ceil(H2_STREAMS_PER_CONN);
            Pool::Http2 {
                conns: (0..n).map(|_| tokio::sync::Mutex::new(None)).collect(),
                next: AtomicUsize::new(0),
            }
        } else {
            Pool::Http1(Http1::new(&template, max_in_flight))
        };

        Ok(Self {
            template,
            connector: Connector {
                host: host.to_owned(),
                port: authority.port_u16().unwrap_or(if https { 443 } else { 80 }),
                tls,
                http2: target.http2,
            },
            pool,
            h2_generation: AtomicU64::new(0),
            expect_status,
        })
    }

    /// Sends one request and drains its reply.
    pub async fn send(&self) -> Result<HttpReply, HttpFailure> {
        match &self.pool {
            Pool::Http1(h1) => h1.send(&self.connector).await,
            Pool::Http2 { conns, next } => {
                let slot = &conns[next.fetch_add(1, Ordering::Relaxed) % conns.len()];
                self.send_http2(slot).await
            }
        }
    }

    #[cfg(test)]
    pub(crate) fn http1(&self) -> Option<&Http1> {
        match &self.pool {
            Pool::Http1(h1) => Some(h1),
            Pool::Http2 { .. } => None,
        }
    }

    /// Whether a reply meets the expectation: the expected status when set, else 2xx or 3xx.
    pub fn is_success(&self, status: StatusCode) -> bool {
        match self.expect_status {
            Some(want) => status == want,
            None => status.is_success() || status.is_redirection(),
        }
    }

    async fn send_http2(&self, slot: &H2Slot) -> Result<HttpReply, HttpFailure> {
        let mut retried = false;
        loop {
            let (id, mut conn) = {
                // Held while connecting, so concurrent requests wait for this connection
                // rather than each opening their own.
                let mut shared = slot.lock().await;
                match shared.as_ref().filter(|(_, c)| !c.is_closed()) {
                    Some((id, conn)) => (*id, conn.clone()),
                    None => {
                        let conn = Box::pin(http2_connect(&self.connector)).await?;
                        let id = self.h2_generation.fetch_add(1, Ordering::Relaxed);
                        *shared = Some((id, conn.clone()));
                        (id, conn)
                    }
                }
            };
            let error = match conn.ready().await {
                Err(e) => e,
                Ok(()) => match conn.try_send_request(self.template.build()).await {
                    Ok(response) => return drain(response).await,
                    Err(e) if e.message().is_some() && !retried => {
                        retried = true;
                        continue;
                    }
                    Err(e) => e.into_error(),
                },
            };
            if retried || !(conn.is_closed() || unstarted_h2(&error)) {
                return Err(failure(&error));
            }
            // The connection is going away: forget it (unless another request already
            // replaced it) and retry once on a new one.
            retried = true;
            let mut shared = slot.lock().await;
            if shared.as_ref().is_some_and(|(cur, _)| *cur == id) {
                *shared = None;
            }
        }
    }
}

impl Requester for HttpRequester {
    async fn request(&self) -> Outcome {
        match self.send().await {
            Ok(reply) => Outcome::Reply {
                code: reply.status.as_str().to_owned(),
                success: self.is_success(reply.status),
                bytes: reply.body_bytes,
            },
            Err(f) => Outcome::Error {
                kind: f.kind,
                detail: f.detail,
            },
        }
    }
}

type Sender2 = http2::SendRequest<Full<Bytes>>;
/// A shared HTTP/2 connection with an id, so a request that saw it fail clears it only if no
/// other request replaced it meanwhile.
type H2Slot = tokio::sync::Mutex<Option<(u64, Sender2)>>;

enum Pool {
    Http1(Http1),
    /// Shared multiplexed connections, taken round-robin; `None` until first used.
    Http2 {
        conns: Box<[H2Slot]>,
        next: AtomicUsize,
    },
}

/// A new HTTP/2 connection to the target, driven by its own task.
async fn http2_connect(connector: &Connector) -> Result<Sender2, HttpFailure> {
    let io = TokioIo::new(connector.io().await?);
    let (sender, conn) = http2::handshake(TokioExecutor::new(), io)
        .await
        .map_err(|e| failure(&e))?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!("http2 connection ended: {e}");
        }
    });
    Ok(sender)
}

/// Reads the whole body, counting its bytes.
async fn drain(response: Response<Incoming>) -> Result<HttpReply, HttpFailure> {
    let status = response.status();
    let version = response.version();
    let mut body = response.into_body();
    let mut body_bytes = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| failure(&e))?;
        if let Some(data) = frame.data_ref() {
            body_bytes += data.len() as u64;
        }
    }
    Ok(HttpReply {
        status,
        version,
        body_bytes,
    })
}

fn parse_url(raw: &str) -> Result<Uri, HttpTargetError> {
    let bad = |reason: &str| HttpTargetError::Url {
        url: raw.to_owned(),
        reason: reason.to_owned(),
    };
    let full = if raw.contains("://") {
        raw.to_owned()
    } else {
        format!("http://{raw}")
    };
    let uri: Uri = full
        .parse()
        .map_err(|e: http::uri::InvalidUri| bad(&e.to_string()))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => return Err(bad("the scheme must be http or https")),
    }
    let authority = uri.authority().ok_or_else(|| bad("no host"))?;
    if authority.as_str().contains('@') {
        return Err(bad(
            "user info is not supported; send an Authorization header",
        ));
    }
    if authority.host().is_empty() {
        return Err(bad("no host"));
    }
    Ok(uri)
}

fn parse_method(raw: &str) -> Result<Method, HttpTargetError> {
    let upper = raw.to_ascii_uppercase();
    if !METHODS.contains(&upper.as_str()) {
        return Err(HttpTargetError::Method(raw.to_owned()));
    }
    Method::from_bytes(upper.as_bytes()).map_err(|_| HttpTargetError::Method(raw.to_owned()))
}

/// rustls settings: the task's CA or the webpki roots, an optional client certificate, and
/// ALPN for the HTTP version asked for.
fn tls_config(
    tls: Option<&TlsConfig>,
    http2: bool,
) -> Result<rustls::ClientConfig, HttpTargetError> {
    let mut roots = rustls::RootCertStore::empty();
    match tls.and_then(|t| t.ca_pem.as_deref()) {
        Some(pem) => {
            for cert in CertificateDer::pem_slice_iter(pem) {
                let cert = cert.map_err(|e| HttpTargetError::Ca(e.to_string()))?;
                roots
                    .add(cert)
                    .map_err(|e| HttpTargetError::Ca(e.to_string()))?;
            }
            if roots.is_empty() {
                return Err(HttpTargetError::Ca("no certificate in the PEM".into()));
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| HttpTargetError::Tls(e.to_string()))?
        .with_root_certificates(roots);
    let cert = tls.and_then(|t| t.client_cert_pem.as_deref());
    let key = tls.and_then(|t| t.client_key_pem.as_deref());
    let mut config = match (cert, key) {
        (None, None) => builder.with_no_client_auth(),
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_slice_iter(cert)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| HttpTargetError::ClientCert(format!("tls.crt: {e}")))?;
            if chain.is_empty() {
                return Err(HttpTargetError::ClientCert(
                    "tls.crt: no certificate in the PEM".into(),
                ));
            }
            let key = PrivateKeyDer::from_pem_slice(key)
                .map_err(|e| HttpTargetError::ClientCert(format!("tls.key: {e}")))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| HttpTargetError::ClientCert(e.to_string()))?
        }
        _ => {
            return Err(HttpTargetError::ClientCert(
                "tls.crt and tls.key go together".into(),
            ));
        }
    };
    config.alpn_protocols = vec![if http2 {
        b"h2".to_vec()
    } else {
        b"http/1.1".to_vec()
    }];
    Ok(config)
}

/// Whether an HTTP/2 request failed before the server started on it, so it is safe to retry:
/// the server refused the stream, or went away before reaching it.
fn unstarted_h2(e: &hyper::Error) -> bool {
    find::<h2::Error>(e)
        .is_some_and(|h| h.is_go_away() || h.reason() == Some(h2::Reason::REFUSED_STREAM))
}

/// The failure kind and detail of a hyper error.
fn failure(e: &hyper::Error) -> HttpFailure {
    HttpFailure {
        kind: kind(e),
        detail: chain(e),
    }
}

fn kind(e: &hyper::Error) -> &'static str {
    if let Some(io) = find::<io::Error>(e) {
        return io_kind(io);
    }
    if let Some(h2) = find::<h2::Error>(e) {
        if let Some(io) = h2.get_io() {
            return io_kind(io);
        }
        if h2.is_reset() || h2.is_go_away() {
            return "reset";
        }
        return "protocol";
    }
    if e.is_incomplete_message() || e.is_canceled() || e.is_closed() {
        // The connection ended before the reply did.
        "reset"
    } else {
        "protocol"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(url: &str) -> HttpTarget {
        HttpTarget {
            url: url.into(),
            method: "GET".into(),
            ..Default::default()
        }
    }

    fn err(t: HttpTarget) -> HttpTargetError {
        HttpRequester::new(&t, 1).err().expect("an error")
    }

    #[test]
    fn header_values_keep_their_colons() {
        assert_eq!(
            parse_header("Referer: http://a:8080/x").unwrap(),
            ("Referer".into(), "http://a:8080/x".into())
        );
        assert_eq!(
            parse_header("X-Empty:").unwrap(),
            ("X-Empty".into(), "".into())
        );
        assert!(matches!(
            parse_header("no colon"),
            Err(HttpTargetError::Header { .. })
        ));
    }

    #[test]
    fn urls() {
        let r = HttpRequester::new(&target("127.0.0.1:8080/a?b=1"), 4).unwrap();
        assert_eq!(r.connector.port, 8080);
        assert_eq!(r.template.uri, "/a?b=1");
        assert_eq!(r.template.headers[HOST], "127.0.0.1:8080");
        let r = HttpRequester::new(&target("https://[::1]/"), 4).unwrap();
        assert_eq!((r.connector.host.as_str(), r.connector.port), ("::1", 443));
        assert!(r.connector.tls.is_some());
        let r = HttpRequester::new(
            &HttpTarget {
                http2: true,
                ..target("http://example.com")
            },
            250,
        )
        .unwrap();
        assert_eq!(r.template.uri, "http://example.com/");
        assert!(matches!(&r.pool, Pool::Http2 { conns, .. } if conns.len() == 3));

        for bad in ["ftp://x/", "http://", "http://u:p@host/", "http://a b/"] {
            assert!(
                matches!(err(target(bad)), HttpTargetError::Url { .. }),
                "{bad}"
            );
        }
    }

    #[test]
    fn fields_are_named_in_errors() {
        let e = err(HttpTarget {
            method: "FETCH".into(),
            ..target("http://h/")
        });
        assert!(e.to_string().starts_with("method \"FETCH\""), "{e}");
        assert_eq!(
            err(HttpTarget {
                expect_status: Some(600),
                ..target("http://h/")
            }),
            HttpTargetError::ExpectStatus(600)
        );
        let e = err(HttpTarget {
            headers: vec![("Bad Name".into(), "v".into())],
            ..target("http://h/")
        });
        assert!(e.to_string().starts_with("header \"Bad Name: v\""), "{e}");
        let e = err(HttpTarget {
            tls: Some(TlsConfig::default()),
            ..target("http://h/")
        });
        assert!(matches!(e, HttpTargetError::Tls(_)), "{e}");
        let e = err(HttpTarget {
            tls: Some(TlsConfig {
                ca_pem: Some(b"not pem".to_vec()),
                ..Default::default()
            }),
            ..target("https://h/")
        });
        assert!(e.to_string().starts_with("tls ca.crt"), "{e}");
        let e = err(HttpTarget {
            tls: Some(TlsConfig {
                client_cert_pem: Some(b"x".to_vec()),
                ..Default::default()
            }),
            ..target("https://h/")
        });
        assert!(e.to_string().contains("go together"), "{e}");
        assert_eq!(
            HttpRequester::new(
                &HttpTarget {
                    method: "head".into(),
                    ..target("h")
                },
                1
            )
            .unwrap()
            .template
            .method,
            Method::HEAD
        );
    }

    #[test]
    fn success_is_the_expected_status_or_2xx_3xx() {
        let any = HttpRequester::new(&target("h"), 1).unwrap();
        assert!(any.is_success(StatusCode::OK));
        assert!(any.is_success(StatusCode::FOUND));
        assert!(!any.is_success(StatusCode::NOT_FOUND));
        let want = HttpRequester::new(
            &HttpTarget {
                expect_status: Some(404),
                ..target("h")
            },
            1,
        )
        .unwrap();
        assert!(want.is_success(StatusCode::NOT_FOUND));
        assert!(!want.is_success(StatusCode::OK));
    }
}
