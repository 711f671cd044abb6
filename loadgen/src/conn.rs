//! What HTTP/1.1 ([`crate::http1`]) and HTTP/2 ([`crate::http`]) share: the request
//! [`Template`], connections to the target (plain TCP or TLS, [`Io`], opened by a
//! [`Connector`]), the reply and the failure of a request, and how errors are labelled by kind.

use std::error::Error as StdError;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode, Uri, Version};
use http_body_util::Full;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// A reply, as [`crate::http::HttpRequester`] saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpReply {
    pub status: StatusCode,
    pub version: Version,
    /// Body bytes received (drained, not kept).
    pub body_bytes: u64,
}

/// A request that got no usable reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind}: {detail}")]
pub struct HttpFailure {
    /// `connect`, `tls`, `reset`, `protocol` or `io`.
    pub kind: &'static str,
    pub detail: String,
}

/// The target's request: what every HTTP/2 send builds anew (hyper consumes it; clones are
/// reference counts except the header map), and what HTTP/1.1 serializes once.
#[derive(Debug)]
pub(crate) struct Template {
    pub(crate) method: Method,
    /// Origin form (`/path?q`) for HTTP/1.1, absolute for HTTP/2.
    pub(crate) uri: Uri,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
}

impl Template {
    pub(crate) fn build(&self) -> Request<Full<Bytes>> {
        let mut req = Request::new(Full::new(self.body.clone()));
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.uri.clone();
        *req.headers_mut() = self.headers.clone();
        req
    }
}

pub(crate) struct TlsSetup {
    pub(crate) connector: TlsConnector,
    pub(crate) name: ServerName<'static>,
}

/// Opens connections to the target.
pub(crate) struct Connector {
    /// Host name or IP literal (IPv6 without brackets), resolved at each connect.
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) tls: Option<TlsSetup>,
    pub(crate) http2: bool,
}

impl Connector {
    pub(crate) async fn io(&self) -> Result<Io, HttpFailure> {
        let tcp = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| HttpFailure {
                kind: "connect",
                detail: chain(&e),
            })?;
        // Requests are small and latency is what we measure: no Nagle delay.
        let _ = tcp.set_nodelay(true);
        let Some(tls) = &self.tls else {
            return Ok(Io::Plain(tcp));
        };
        // Everything failing during the handshake (alerts, bad certificates, a peer that does
        // not speak TLS and hangs up) is a TLS failure.
        let stream = tls
            .connector
            .connect(tls.name.clone(), tcp)
            .await
            .map_err(|e| HttpFailure {
                kind: "tls",
                detail: chain(&e),
            })?;
        if self.http2 && stream.get_ref().1.alpn_protocol() != Some(b"h2") {
            return Err(HttpFailure {
                kind: "protocol",
                detail: "the server did not negotiate HTTP/2 (ALPN h2)".into(),
            });
        }
        Ok(Io::Tls(Box::new(stream)))
    }
}

/// A plain or TLS connection: an enum rather than a boxed trait object, so reads and writes
/// are direct calls.
pub(crate) enum Io {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Tls(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Io::Plain(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

pub(crate) fn io_kind(e: &io::Error) -> &'static str {
    if e.get_ref().is_some_and(|inner| inner.is::<rustls::Error>()) {
        return "tls";
    }
    match e.kind() {
        io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionAborted
        | io::ErrorKind::BrokenPipe
        | io::ErrorKind::UnexpectedEof => "reset",
        _ => "io",
    }
}

/// The first error of type `T` in `e`'s source chain (`e` included).
pub(crate) fn find<'a, T: StdError + 'static>(e: &'a (dyn StdError + 'static)) -> Option<&'a T> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(t) = err.downcast_ref::<T>() {
            return Some(t);
        }
        cur = err.source();
    }
    None
}

/// `e` and its sources, `: `-separated, skipping a source whose text its parent already holds.
pub(crate) fn chain(e: &(dyn StdError + 'static)) -> String {
    let mut text = e.to_string();
    let mut cur = e.source();
    while let Some(err) = cur {
        let s = err.to_string();
        if !text.contains(&s) {
            text.push_str(": ");
            text.push_str(&s);
        }
        cur = err.source();
    }
    text
}
