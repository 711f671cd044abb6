//! The HTTP/1 server of every meshdoctor endpoint that faces the network (the controller's API,
//! the agents' metrics), bounded so that slow or idle clients cannot starve the others: at most
//! [`Bounds::connections`] connections at once (further ones are closed as soon as accepted,
//! and never above what the process's open-file limit leaves room for), and a request's head
//! must arrive whole within [`Bounds::header_timeout`] (hyper closes the connection otherwise;
//! with TLS, the handshake must also end within it). Bodies are read by the handlers, each with
//! its own size and time bound.

use std::{future::Future, sync::Arc, time::Duration};

use hyper_util::{
    rt::{TokioIo, TokioTimer},
    service::TowerToHyperService,
};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpListener,
    sync::{Semaphore, watch},
};
use tracing::{debug, warn};

/// File descriptors kept for everything but connections: files, sockets to other services,
/// the tokio runtime's own.
const FDS_KEPT: u64 = 64;

/// How long a stopping server waits for its requests in flight.
const DRAIN: Duration = Duration::from_secs(10);

/// What a server allows its clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    /// Connections open at once.
    pub connections: usize,
    /// Time for a request's head (request line and headers) to arrive whole.
    pub header_timeout: Duration,
}

impl Bounds {
    /// `connections` at most, and fewer if the open-file limit (`RLIMIT_NOFILE`) leaves less
    /// room: a server out of descriptors cannot even accept its health checks.
    pub fn within_fd_limit(connections: usize, header_timeout: Duration) -> Self {
        let room = fd_limit().map_or(u64::MAX, |n| n.saturating_sub(FDS_KEPT).max(1));
        Self {
            connections: connections.min(usize::try_from(room).unwrap_or(usize::MAX)),
            header_timeout,
        }
    }
}

/// Serves HTTP/1 requests on one connection until it ends, or gracefully once `stop` fires.
async fn serve_connection<I>(
    io: I,
    service: TowerToHyperService<axum::Router>,
    bounds: Bounds,
    mut stop: watch::Receiver<()>,
) -> Result<(), String>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(bounds.header_timeout);
    let mut conn = std::pin::pin!(http.serve_connection(TokioIo::new(io), service));
    let served = tokio::select! {
        served = conn.as_mut() => served,
        _ = stop.changed() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    served.map_err(|e| e.to_string())
}

/// The soft open-file limit, if it can be read.
fn fd_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct it is given, which lives for the call.
    let ok = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0;
    (ok && limit.rlim_cur != libc::RLIM_INFINITY).then_some(limit.rlim_cur)
}

/// Serves `router` on `listener` within `bounds`, over TLS with `tls`, until `shutdown`
/// completes, then lets the requests in flight finish (up to ten seconds).
pub async fn serve(
    listener: TcpListener,
    router: axum::Router,
    bounds: Bounds,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: impl Future<Output = ()>,
) {
    let tls = tls.map(tokio_rustls::TlsAcceptor::from);
    let permits = Arc::new(Semaphore::new(bounds.connections));
    let (stopping, stop) = watch::channel(());
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of descriptors or memory for a moment: keep serving those there are.
                warn!("accepting a connection: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            debug!(%peer, limit = bounds.connections, "connection closed: at the connection limit");
            continue;
        };
        let service = TowerToHyperService::new(router.clone());
        let stop = stop.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let served = match tls {
                None => serve_connection(stream, service, bounds, stop).await,
                Some(tls) => {
                    match tokio::time::timeout(bounds.header_timeout, tls.accept(stream)).await {
                        Ok(Ok(stream)) => serve_connection(stream, service, bounds, stop).await,
                        Ok(Err(e)) => Err(format!("TLS handshake: {e}")),
                        Err(_) => Err("TLS handshake: too slow".into()),
                    }
                }
            };
            if let Err(e) = served {
                debug!(%peer, "connection: {e}");
            }
        });
    }
    drop(stopping);
    let all = u32::try_from(bounds.connections).unwrap_or(u32::MAX);
    let _ = tokio::time::timeout(DRAIN, permits.acquire_many(all)).await;
}

#[cfg(test)]
mod tests {
    use std::io::{Read as _, Write as _};

    use axum::routing::get;

    use super::*;

    /// Starts a server of one route on loopback; its address.
    async fn start(bounds: Bounds) -> std::net::SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let router = axum::Router::new().route("/healthz", get(|| async { "ok" }));
        tokio::spawn(serve(
            listener,
            router,
            bounds,
            None,
            std::future::pending(),
        ));
        addr
    }

    /// `GET /healthz` on a fresh connection: the response, or what ended it.
    fn get_healthz(addr: std::net::SocketAddr) -> std::io::Result<String> {
        let mut c = std::net::TcpStream::connect(addr)?;
        c.set_read_timeout(Some(Duration::from_secs(10)))?;
        c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")?;
        let mut out = String::new();
        c.read_to_string(&mut out)?;
        Ok(out)
    }

    /// Clients that send half a head hold the server's connections only until the header
    /// timeout: meanwhile a client beyond the limit is closed at once, afterwards one is served.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn slow_heads_are_cut_off_and_connections_are_bounded() {
        let addr = start(Bounds {
            connections: 3,
            header_timeout: Duration::from_millis(300),
        })
        .await;
        tokio::task::spawn_blocking(move || {
            let mut slow: Vec<std::net::TcpStream> = (0..3)
                .map(|_| {
                    let mut c = std::net::TcpStream::connect(addr).unwrap();
                    c.write_all(b"GET /healthz HTTP/1.1\r\nHost:").unwrap();
                    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                    c
                })
                .collect();
            // Let the server take the three before the fourth comes.
            std::thread::sleep(Duration::from_millis(100));
            let beyond = get_healthz(addr);
            assert!(
                beyond.as_ref().map_or(true, |r| r.is_empty()),
                "served beyond the limit: {beyond:?}"
            );
            // Each slow client is cut off (hyper answers 408 or just closes), not held.
            for c in &mut slow {
                let mut rest = Vec::new();
                let ended = c.read_to_end(&mut rest);
                let held = ended.as_ref().is_err_and(|e| {
                    matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    )
                });
                assert!(!held, "a slow head was held: {ended:?}");
            }
            let served = get_healthz(addr).unwrap();
            assert!(
                served.starts_with("HTTP/1.1 200") && served.ends_with("ok"),
                "{served}"
            );
        })
        .await
        .unwrap();
    }

    #[test]
    fn the_limit_leaves_descriptors_for_the_rest() {
        let b = Bounds::within_fd_limit(usize::MAX, Duration::from_secs(1));
        let limit = fd_limit().unwrap();
        assert_eq!(b.connections as u64, limit - FDS_KEPT);
        assert_eq!(Bounds::within_fd_limit(10, Duration::ZERO).connections, 10);
    }
}
