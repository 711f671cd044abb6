//! HttpRequester and the runner against a real nginx started by each test on free ports of
//! 127.0.0.1 (plain HTTP, HTTPS with a CA generated here, a client-certificate check, HTTP/2
//! over TLS and h2c), plus a stopped server and a silent one. Every test skips itself, saying
//! so, when nginx is not installed; every round is bounded in count (qps x duration) and time.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use http::{StatusCode, Version};
use meshdoctor_api::LoadStats;
use meshdoctor_lab::{Pem, TestCa, die_with_parent, nginx_config};
use meshdoctor_loadgen::http::{HttpRequester, HttpTarget, TlsConfig, parse_header};
use meshdoctor_loadgen::{LoadSpec, run};

const NGINX: &str = "/usr/sbin/nginx";
/// Upper bound on any test's own work, on top of nginx's start.
const TEST_TIMEOUT: Duration = Duration::from_secs(30);

macro_rules! nginx_or_skip {
    ($($arg:expr),+ $(,)?) => {
        match Nginx::start($($arg),+) {
            Some(nginx) => nginx,
            None => {
                eprintln!("skipped: nginx not installed");
                return;
            }
        }
    };
}

/// A CA, a server certificate it signed for 127.0.0.1 and localhost, and a client certificate
/// it signed.
struct Pki {
    ca: String,
    server: Pem,
    client: Pem,
}

impl Pki {
    fn new() -> Self {
        let ca = TestCa::new("meshdoctor test CA");
        Self {
            server: ca.server(&["127.0.0.1", "localhost"]),
            client: ca.client("probe"),
            ca: ca.cert_pem,
        }
    }

    fn ca_only(&self) -> TlsConfig {
        TlsConfig {
            ca_pem: Some(self.ca.as_bytes().to_vec()),
            ..Default::default()
        }
    }

    fn with_client_cert(&self) -> TlsConfig {
        TlsConfig {
            client_cert_pem: Some(self.client.cert.as_bytes().to_vec()),
            client_key_pem: Some(self.client.key.as_bytes().to_vec()),
            ..self.ca_only()
        }
    }
}

/// An nginx in a temp prefix dir (config, pid, logs, temp paths all inside), listening on free
/// ports of 127.0.0.1; killed and its dir removed on drop. It runs as one process
/// (`master_process off`): killing a master leaves its workers serving.
struct Nginx {
    child: Option<Child>,
    dir: PathBuf,
    ports: Vec<u16>,
}

impl Nginx {
    /// Starts nginx serving what `servers` makes of the temp dir (for certificates and logs)
    /// and `ports` free ports; the CA and server certificate of `pki` are written there.
    fn start(
        ports: usize,
        pki: Option<&Pki>,
        servers: impl Fn(&Path, &[u16]) -> String,
    ) -> Option<Self> {
        if !Path::new(NGINX).is_file() {
            return None;
        }
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "meshdoctor-nginx-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        if let Some(pki) = pki {
            for (file, pem) in [
                ("ca.pem", &pki.ca),
                ("server.pem", &pki.server.cert),
                ("server.key", &pki.server.key),
            ] {
                std::fs::write(dir.join(file), pem).unwrap();
            }
        }
        let ports: Vec<u16> = (0..ports).map(|_| free_port()).collect();
        let d = dir.display();
        let http = format!("  access_log {d}/access.log;\n{}", servers(&dir, &ports));
        std::fs::write(dir.join("nginx.conf"), nginx_config(&dir, "nginx", &http)).unwrap();
        let mut command = Command::new(NGINX);
        die_with_parent(&mut command);
        let child = command
            .arg("-p")
            .arg(&dir)
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .arg("-e")
            .arg(dir.join("nginx-error.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nginx");
        let mut nginx = Self {
            child: Some(child),
            dir,
            ports,
        };
        nginx.wait_listening();
        Some(nginx)
    }

    fn wait_listening(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        for &port in &self.ports {
            while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
                if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                    panic!("nginx exited ({status}): {}", self.error_log());
                }
                assert!(
                    Instant::now() < deadline,
                    "nginx not listening: {}",
                    self.error_log()
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    fn port(&self, i: usize) -> u16 {
        self.ports[i]
    }

    fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("nginx-error.log")).unwrap_or_default()
    }

    /// The lines of an access log in the prefix dir, once it has `n` (nginx writes a line
    /// after the reply has gone, so the last may trail the client a little), or after 2 s.
    fn log(&self, name: &str, n: usize) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            let lines: Vec<String> = std::fs::read_to_string(self.dir.join(name))
                .unwrap_or_default()
                .lines()
                .map(str::to_owned)
                .collect();
            if lines.len() >= n || Instant::now() > deadline {
                return lines;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn get(url: String) -> HttpTarget {
    HttpTarget {
        url,
        method: "GET".into(),
        ..Default::default()
    }
}

fn spec(qps: u32, secs: u64, max_in_flight: usize) -> LoadSpec {
    LoadSpec {
        qps,
        duration: Duration::from_secs(secs),
        timeout: Duration::from_secs(2),
        max_in_flight,
    }
}

/// One bounded round of `target` through the runner.
async fn round(target: &HttpTarget, spec: &LoadSpec) -> LoadStats {
    let requester = Arc::new(HttpRequester::new(target, spec.max_in_flight).unwrap());
    round_with(requester, spec).await
}

async fn round_with(requester: Arc<HttpRequester>, spec: &LoadSpec) -> LoadStats {
    tokio::time::timeout(TEST_TIMEOUT, run(requester, spec))
        .await
        .expect("round within the test bound")
}

/// Every planned request sent and succeeded with `code`, and the latency summary is ordered.
fn assert_all_ok(s: &LoadStats, code: &str) {
    assert_eq!(s.requests, s.planned, "{s:?}");
    assert_eq!(s.successes, s.planned, "{s:?}");
    assert_eq!(s.not_sent, 0, "{s:?}");
    assert!(s.errors.is_empty(), "{s:?}");
    assert_eq!(s.codes.get(code), Some(&s.planned), "{s:?}");
    let l = s.latency.expect("latency of successes");
    assert!(
        l.min <= l.p50 && l.p50 <= l.p90 && l.p90 <= l.p95 && l.p95 <= l.p99 && l.p99 <= l.max,
        "{l:?}"
    );
    assert!(l.min > 0 && l.max < 2_000_000, "{l:?}");
    assert!(l.mean >= l.min as f64 && l.mean <= l.max as f64, "{l:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_get_counts_bytes_and_latency() {
    let nginx = nginx_or_skip!(1, None, |_, p| format!(
        "server {{ listen 127.0.0.1:{}; location / {{ return 200 \"hello\\n\"; }} }}\n",
        p[0]
    ));
    let target = get(format!("http://127.0.0.1:{}/", nginx.port(0)));
    let s = round(&target, &spec(200, 1, 64)).await;
    assert_eq!(s.planned, 200);
    assert_all_ok(&s, "200");
    assert_eq!(s.bytes, 200 * 6);
    // 200 requests from the first send to the last reply, about a second (a busy machine may
    // delay a send, and the pacer catches up).
    assert!(s.tps > 150.0 && s.tps < 250.0, "{}", s.tps);
    assert!(
        s.duration_ms > 800 && s.duration_ms < 1500,
        "{}",
        s.duration_ms
    );
    assert_eq!(nginx.log("access.log", 200).len(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_body_and_headers_reach_nginx() {
    // nginx reads a request body only to pass it on: /post proxies to /sink on the same
    // server and logs what it read.
    let nginx = nginx_or_skip!(1, None, |d, p| {
        let d = d.display();
        let port = p[0];
        format!(
            "log_format seen escape=json '$request_method|$http_x_probe|$http_x_other|$request_body';\n\
                 server {{ listen 127.0.0.1:{port};\n\
                   location /post {{ access_log {d}/seen.log seen; proxy_pass http://127.0.0.1:{port}/sink; }}\n\
                   location /sink {{ access_log off; return 201 \"stored\"; }}\n}}\n"
        )
    });
    let target = HttpTarget {
        url: format!("http://127.0.0.1:{}/post", nginx.port(0)),
        method: "post".into(),
        headers: vec![
            parse_header("X-Probe: urn:a:b:c").unwrap(),
            ("X-Other".into(), "two words".into()),
        ],
        body: Some("ping-body-42".into()),
        ..Default::default()
    };
    let s = round(&target, &spec(20, 1, 8)).await;
    assert_all_ok(&s, "201");
    assert_eq!(s.bytes, 20 * 6);
    let seen = nginx.log("seen.log", 20);
    assert_eq!(seen.len(), 20);
    for line in seen {
        assert_eq!(line, "POST|urn:a:b:c|two words|ping-body-42");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unexpected_status_is_no_success() {
    let nginx = nginx_or_skip!(1, None, |_, p| format!(
        "server {{ listen 127.0.0.1:{}; location / {{ return 404; }} }}\n",
        p[0]
    ));
    let url = format!("http://127.0.0.1:{}/missing", nginx.port(0));
    let expect = |code| HttpTarget {
        expect_status: Some(code),
        ..get(url.clone())
    };
    let s = round(&expect(200), &spec(50, 1, 16)).await;
    assert_eq!((s.requests, s.successes, s.not_sent), (50, 0, 0));
    assert_eq!(s.codes, [("404".to_owned(), 50)].into());
    assert!(s.errors.is_empty());
    assert_eq!(s.latency, None);
    // Without an expectation a 404 fails too (neither 2xx nor 3xx); expecting it succeeds.
    assert_eq!(
        round(&get(url.clone()), &spec(10, 1, 16)).await.successes,
        0
    );
    assert_all_ok(&round(&expect(404), &spec(10, 1, 16)).await, "404");
}

/// An nginx with `ssl` on port 0 (`http2` too when asked) and `ssl_verify_client on` on port 1.
fn tls_servers(http2: &str) -> impl Fn(&Path, &[u16]) -> String + '_ {
    move |d, p| {
        let d = d.display();
        format!(
            "log_format proto '$server_protocol';\n\
             ssl_certificate {d}/server.pem;\n  ssl_certificate_key {d}/server.key;\n\
             server {{ listen 127.0.0.1:{} ssl {http2};\n\
               access_log {d}/proto.log proto;\n\
               location / {{ return 200 \"secure\"; }} }}\n\
             server {{ listen 127.0.0.1:{} ssl;\n\
               ssl_client_certificate {d}/ca.pem;\n  ssl_verify_client on;\n\
               location / {{ return 200 \"mutual\"; }} }}\n",
            p[0], p[1]
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_verifies_against_the_given_ca_only() {
    let pki = Pki::new();
    let nginx = nginx_or_skip!(2, Some(&pki), tls_servers(""));
    let port = nginx.port(0);
    for host in ["127.0.0.1", "localhost"] {
        let target = HttpTarget {
            tls: Some(pki.ca_only()),
            ..get(format!("https://{host}:{port}/"))
        };
        let s = round(&target, &spec(50, 1, 16)).await;
        assert_all_ok(&s, "200");
        assert_eq!(s.bytes, 50 * 6);
    }

    // Without the CA the server is checked against the webpki roots, and fails.
    let target = get(format!("https://127.0.0.1:{port}/"));
    let failure = HttpRequester::new(&target, 1)
        .unwrap()
        .send()
        .await
        .unwrap_err();
    assert_eq!(failure.kind, "tls", "{failure}");
    assert!(failure.detail.contains("UnknownIssuer"), "{failure}");
    let s = round(&target, &spec(20, 1, 8)).await;
    assert_eq!((s.requests, s.successes), (20, 0));
    assert_eq!(s.errors, [("tls".to_owned(), 20)].into());
    assert!(s.codes.is_empty());

    // TLS to a plain-HTTP port fails in the handshake too.
    let plain = nginx_or_skip!(1, None, |_, p| format!(
        "server {{ listen 127.0.0.1:{}; return 200; }}\n",
        p[0]
    ));
    let target = HttpTarget {
        tls: Some(pki.ca_only()),
        ..get(format!("https://127.0.0.1:{}/", plain.port(0)))
    };
    let s = round(&target, &spec(10, 1, 8)).await;
    assert_eq!(s.errors, [("tls".to_owned(), 10)].into());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificate_is_presented() {
    let pki = Pki::new();
    let nginx = nginx_or_skip!(2, Some(&pki), tls_servers(""));
    let url = format!("https://127.0.0.1:{}/", nginx.port(1));
    let with = HttpTarget {
        tls: Some(pki.with_client_cert()),
        ..get(url.clone())
    };
    let s = round(&with, &spec(50, 1, 16)).await;
    assert_all_ok(&s, "200");
    assert_eq!(s.bytes, 50 * 6);

    // nginx answers a missing client certificate with 400.
    let without = HttpTarget {
        tls: Some(pki.ca_only()),
        ..get(url)
    };
    let s = round(&without, &spec(20, 1, 8)).await;
    assert_eq!((s.requests, s.successes), (20, 0));
    assert_eq!(s.codes, [("400".to_owned(), 20)].into(), "{s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_over_tls_negotiates_h2() {
    let pki = Pki::new();
    let nginx = nginx_or_skip!(2, Some(&pki), tls_servers("http2"));
    let target = HttpTarget {
        http2: true,
        tls: Some(pki.ca_only()),
        ..get(format!("https://127.0.0.1:{}/", nginx.port(0)))
    };
    let requester = Arc::new(HttpRequester::new(&target, 32).unwrap());
    let reply = requester.send().await.unwrap();
    assert_eq!(
        (reply.status, reply.version, reply.body_bytes),
        (StatusCode::OK, Version::HTTP_2, 6)
    );
    let s = round_with(requester, &spec(300, 1, 32)).await;
    assert_all_ok(&s, "200");
    let log = nginx.log("proto.log", 301);
    assert_eq!(log.len(), 301);
    assert!(log.iter().all(|l| l == "HTTP/2.0"), "{log:?}");

    // Without http2 the same server is spoken to in HTTP/1.1 (ALPN offers only http/1.1).
    let h1 = HttpRequester::new(
        &HttpTarget {
            http2: false,
            ..target
        },
        1,
    )
    .unwrap();
    assert_eq!(h1.send().await.unwrap().version, Version::HTTP_11);

    // A server that does not offer h2 refuses an http2 target in the handshake.
    let only_h1 = HttpTarget {
        http2: true,
        tls: Some(pki.with_client_cert()),
        ..get(format!("https://127.0.0.1:{}/", nginx.port(1)))
    };
    let failure = HttpRequester::new(&only_h1, 1)
        .unwrap()
        .send()
        .await
        .unwrap_err();
    assert_eq!(failure.kind, "tls", "{failure}");
    assert!(
        failure.detail.contains("NoApplicationProtocol"),
        "{failure}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_by_prior_knowledge() {
    let nginx = nginx_or_skip!(1, None, |_, p| format!(
        "server {{ listen 127.0.0.1:{} http2; location / {{ return 200 \"clear\"; }} }}\n",
        p[0]
    ));
    let target = HttpTarget {
        http2: true,
        ..get(format!("http://127.0.0.1:{}/", nginx.port(0)))
    };
    let requester = Arc::new(HttpRequester::new(&target, 16).unwrap());
    assert_eq!(requester.send().await.unwrap().version, Version::HTTP_2);
    assert_all_ok(&round_with(requester, &spec(100, 1, 16)).await, "200");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_closed_by_the_server_are_replaced_without_failures() {
    // nginx closes a connection after keepalive_requests (1000 by default; 7 here), HTTP/1.1
    // with `Connection: close`, HTTP/2 with GOAWAY: requests go on over new connections.
    let pki = Pki::new();
    let nginx = nginx_or_skip!(2, Some(&pki), |d, p| {
        let d = d.display();
        format!(
            "keepalive_requests 7;\n\
                 ssl_certificate {d}/server.pem;\n  ssl_certificate_key {d}/server.key;\n\
                 server {{ listen 127.0.0.1:{}; return 200 \"x\"; }}\n\
                 server {{ listen 127.0.0.1:{} ssl http2; return 200 \"x\"; }}\n",
            p[0], p[1]
        )
    });
    let h1 = get(format!("http://127.0.0.1:{}/", nginx.port(0)));
    assert_all_ok(&round(&h1, &spec(200, 1, 32)).await, "200");
    let h2 = HttpTarget {
        http2: true,
        tls: Some(pki.ca_only()),
        ..get(format!("https://127.0.0.1:{}/", nginx.port(1)))
    };
    assert_all_ok(&round(&h2, &spec(200, 1, 32)).await, "200");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_server_gives_connect_errors() {
    let mut nginx = nginx_or_skip!(1, None, |_, p| format!(
        "server {{ listen 127.0.0.1:{}; return 200; }}\n",
        p[0]
    ));
    let target = get(format!("http://127.0.0.1:{}/", nginx.port(0)));
    let requester = Arc::new(HttpRequester::new(&target, 4).unwrap());
    assert_all_ok(&round_with(requester.clone(), &spec(20, 1, 8)).await, "200");

    // The same requester, its pooled connections now closed by the dead server.
    nginx.stop();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let s = round_with(requester, &spec(20, 1, 8)).await;
    assert_eq!((s.requests, s.successes, s.not_sent), (20, 0, 0));
    assert_eq!(s.errors, [("connect".to_owned(), 20)].into(), "{s:?}");
    assert_eq!(s.latency, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_server_times_out() {
    // Accepts connections and never answers (no nginx needed).
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((conn, _)) = listener.accept().await {
            held.push(conn);
        }
    });
    let target = get(format!("http://127.0.0.1:{port}/"));
    let s = round(
        &target,
        &LoadSpec {
            timeout: Duration::from_millis(100),
            ..spec(20, 1, 8)
        },
    )
    .await;
    // One due every 50 ms, each hanging 100 ms: two or three in flight, under the bound.
    assert_eq!((s.requests, s.successes, s.not_sent), (20, 0, 0), "{s:?}");
    assert_eq!(s.errors, [("timeout".to_owned(), 20)].into());
    server.abort();
}
