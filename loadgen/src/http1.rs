//! HTTP/1.1 without hyper: the request of a target serialized once, keep-alive connections
//! that requests take from a pool and put back, and a sans-IO response parser.
//!
//! Why it is built this way:
//! - A load generator sends the same request over and over; hyper builds, encodes and
//!   dispatches each one through a spawned connection task and channels, which was most of the
//!   user-space cost of a request (`cargo xtask bench http`). Here a request is one write of
//!   bytes prepared by [`serialize`] and reads into the connection's own buffer, driven by the
//!   request's future itself: no task, channel, allocation or header map per request.
//! - The parser ([`ResponseParser`]) takes bytes and says how many it used, so it is tested on
//!   any split of any input, hostile ones included: it never panics, bounds the head
//!   ([`MAX_HEAD`]), chunk-size and trailer lines, and frames the body as RFC 9112 §6.3 says
//!   (no body for HEAD, 1xx, 204 and 304; Transfer-Encoding chunked; Content-Length; else up to
//!   the close). Interim 1xx responses are skipped. Bodies are counted, not kept.
//! - A connection goes back to the pool only after a complete response with keep-alive (HTTP/1.1
//!   without `Connection: close`, HTTP/1.0 with `Connection: keep-alive`), nothing more read,
//!   and a known body length. A pooled connection the server closed meanwhile (nginx's
//!   keepalive_timeout, a restart) is noticed before use when its end already arrived, and a
//!   reused connection that ends before the first byte of its response is replaced by a fresh
//!   one, once: that is the server's keep-alive race, no failure of the target.
//! - Timeouts are the runner's: it drops the request's future, and the connection with it.

use std::io;
use std::mem::MaybeUninit;
use std::sync::Mutex;
use std::task::{Context, Poll, Waker};

use http::header::{CONTENT_LENGTH, HOST, TRANSFER_ENCODING};
use http::{StatusCode, Version};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadBuf};

use crate::conn::{Connector, HttpFailure, HttpReply, Io, Template, chain, io_kind};

/// Most bytes of a response head (status line and header fields), and of a chunked body's
/// trailer section.
pub const MAX_HEAD: usize = 64 * 1024;
/// Most header fields in a response head.
const MAX_HEADERS: usize = 100;
/// Most bytes of a chunk-size line after the size (extensions, whitespace).
const MAX_CHUNK_EXT: usize = 4096;
/// A connection's read buffer to begin with; it grows only for a larger head.
const READ_BUF: usize = 8 * 1024;

/// The HTTP/1.1 side of a requester: the serialized request and the idle connections.
pub(crate) struct Http1 {
    request: Box<[u8]>,
    /// A HEAD request: its responses have no body whatever their headers say.
    head: bool,
    /// Idle keep-alive connections, most recently used last (so few stay warm at low rates).
    idle: Mutex<Vec<Conn>>,
}

impl Http1 {
    pub(crate) fn new(template: &Template, max_in_flight: usize) -> Self {
        Self {
            request: serialize(template).into_boxed_slice(),
            head: template.method == http::Method::HEAD,
            idle: Mutex::new(Vec::with_capacity(max_in_flight)),
        }
    }

    #[cfg(test)]
    pub(crate) fn request_bytes(&self) -> &[u8] {
        &self.request
    }

    /// Sends the request once over a pooled or new connection and reads the whole response.
    pub(crate) async fn send(&self, connector: &Connector) -> Result<HttpReply, HttpFailure> {
        let mut fresh_only = false;
        loop {
            let pooled = if fresh_only { None } else { self.take_idle() };
            let reused = pooled.is_some();
            let mut conn = match pooled {
                Some(conn) => conn,
                // Boxed: connecting is rare, and its large future would otherwise be part of
                // every request's.
                None => Conn::new(Box::pin(connector.io()).await?),
            };
            match conn.exchange(&self.request, self.head).await {
                Ok((reply, reusable)) => {
                    if reusable {
                        self.idle.lock().expect("pool lock").push(conn);
                    }
                    return Ok(reply);
                }
                Err(e) if reused && e.before_response && e.failure.kind == "reset" => {
                    fresh_only = true;
                }
                Err(e) => return Err(e.failure),
            }
        }
    }

    /// An idle connection that is not known to be closed.
    fn take_idle(&self) -> Option<Conn> {
        loop {
            let mut conn = self.idle.lock().expect("pool lock").pop()?;
            if conn.still_open() {
                return Some(conn);
            }
        }
    }
}

/// The request line, `Host` (the target's, else the URL's authority), the target's headers, the body's
/// `Content-Length` (the target's own `Content-Length` and `Transfer-Encoding` are left out:
/// the body given is what is sent) and the body.
pub(crate) fn serialize(t: &Template) -> Vec<u8> {
    let mut out = Vec::with_capacity(128 + t.body.len());
    out.extend_from_slice(t.method.as_str().as_bytes());
    out.push(b' ');
    let target = t.uri.path_and_query().map_or("/", |p| p.as_str());
    out.extend_from_slice(if target.is_empty() { "/" } else { target }.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let host = t.headers.get_all(HOST).iter().map(|v| (&HOST, v));
    let rest = t.headers.iter().filter(|(name, _)| *name != HOST);
    for (name, value) in host.chain(rest) {
        if name == CONTENT_LENGTH || name == TRANSFER_ENCODING {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let body_method = matches!(t.method.as_str(), "POST" | "PUT" | "PATCH");
    if !t.body.is_empty() || body_method {
        out.extend_from_slice(format!("content-length: {}\r\n", t.body.len()).as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(&t.body);
    out
}

/// A failed exchange, and whether it failed before any byte of the response arrived.
struct ExchangeError {
    failure: HttpFailure,
    before_response: bool,
}

/// One keep-alive connection and its read buffer, which holds no byte between responses.
struct Conn {
    io: Io,
    buf: Vec<u8>,
}

impl Conn {
    fn new(io: Io) -> Self {
        Self {
            io,
            buf: Vec::with_capacity(READ_BUF),
        }
    }

    /// False when the peer closed the idle connection, or sent something unasked, as far as
    /// has been seen (no system call unless the socket was signalled readable).
    fn still_open(&mut self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        self.buf.clear();
        let spare = self.buf.spare_capacity_mut();
        let one = spare.len().min(1);
        let mut read = ReadBuf::uninit(&mut spare[..one]);
        matches!(
            std::pin::Pin::new(&mut self.io).poll_read(&mut cx, &mut read),
            Poll::Pending
        )
    }

    /// Writes `request` and reads its response. The reply, and whether the connection can
    /// carry another request.
    async fn exchange(
        &mut self,
        request: &[u8],
        head: bool,
    ) -> Result<(HttpReply, bool), ExchangeError> {
        let io_failure = |e: io::Error, before_response| ExchangeError {
            failure: HttpFailure {
                kind: io_kind(&e),
                detail: chain(&e),
            },
            before_response,
        };
        if let Err(e) = self.io.write_all(request).await {
            return Err(io_failure(e, true));
        }
        if let Err(e) = self.io.flush().await {
            return Err(io_failure(e, true));
        }
        let mut parser = ResponseParser::new(head);
        let mut received = false;
        let mut start = 0;
        self.buf.clear();
        loop {
            while start < self.buf.len() && !parser.is_done() {
                let used = parser.feed(&self.buf[start..]).map_err(|e| ExchangeError {
                    failure: e.failure(),
                    before_response: false,
                })?;
                if used == 0 {
                    break;
                }
                start += used;
            }
            if parser.is_done() {
                break;
            }
            self.make_room(&mut start);
            let n = match self.io.read_buf(&mut self.buf).await {
                Ok(n) => n,
                Err(e) => return Err(io_failure(e, !received)),
            };
            if n == 0 {
                parser.eof().map_err(|e| ExchangeError {
                    failure: e.failure(),
                    before_response: !received,
                })?;
                break;
            }
            received = true;
        }
        // Bytes past the response were never asked for: the connection is out of step.
        let reusable = parser.keep_alive() && start == self.buf.len();
        Ok((parser.reply(), reusable))
    }

    /// Makes the buffer's unparsed bytes (from `start`) start at 0 with room to read more
    /// behind them. The parser bounds what it leaves unparsed (a head below [`MAX_HEAD`]), so
    /// the buffer stays below `MAX_HEAD + READ_BUF`.
    fn make_room(&mut self, start: &mut usize) {
        if *start > 0 {
            self.buf.drain(..*start);
            *start = 0;
        }
        if self.buf.capacity() - self.buf.len() < READ_BUF / 2 {
            self.buf.reserve(READ_BUF);
        }
    }
}

/// Why a response could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ParseError {
    /// Bytes that are not HTTP/1.x.
    Invalid(String),
    /// A head or trailer section over [`MAX_HEAD`], or a chunk-size line over its bound.
    TooLarge(&'static str),
    /// The connection ended before the response did (`received`: after some of it).
    Closed { received: bool },
}

impl ParseError {
    fn failure(&self) -> HttpFailure {
        let (kind, detail) = match self {
            ParseError::Invalid(why) => ("protocol", format!("invalid response: {why}")),
            ParseError::TooLarge(what) => ("protocol", format!("response {what} too large")),
            ParseError::Closed { received: false } => (
                "reset",
                "connection closed before the response began".to_owned(),
            ),
            ParseError::Closed { received: true } => (
                "reset",
                "connection closed before the response was complete".to_owned(),
            ),
        };
        HttpFailure { kind, detail }
    }
}

/// Where a response is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Waiting for a (final) head.
    Head,
    /// A body of this many more bytes.
    Fixed(u64),
    /// A body up to the connection's end.
    UntilEof,
    Chunked(Chunk),
    Done,
}

/// Where a chunked body is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// Hex digits of a chunk size so far.
    Size {
        size: u64,
        digits: u8,
    },
    /// After the size: whitespace and extensions, up to CR.
    Ext {
        size: u64,
        len: usize,
    },
    /// CR seen after a chunk-size line; LF expected.
    SizeLf {
        size: u64,
    },
    /// This many more data bytes of the chunk.
    Data(u64),
    /// The CRLF after chunk data.
    DataCr,
    DataLf,
    /// In the trailer section: bytes of the current line, bytes of the section.
    Trailer {
        line: usize,
        total: usize,
    },
    /// CR seen in the trailer section; LF expected (the section ends if the line was empty).
    TrailerLf {
        empty: bool,
        total: usize,
    },
}

/// Reads one HTTP/1.x response from the bytes it is fed: `feed` what arrived, as many times
/// as needed (it says how many bytes it used; unused ones are to be fed again with more behind
/// them), `eof` when the connection ended, until [`is_done`](Self::is_done).
#[derive(Debug, Clone)]
pub(crate) struct ResponseParser {
    head_request: bool,
    state: State,
    status: u16,
    version: Version,
    keep_alive: bool,
    body_bytes: u64,
    /// Whether any byte was fed.
    received: bool,
    /// Bytes of the head searched for its end so far (see [`ResponseParser::head`]).
    head_scanned: usize,
    /// Times the head was handed to httparse.
    #[cfg(test)]
    head_parses: usize,
}

impl ResponseParser {
    pub(crate) fn new(head_request: bool) -> Self {
        Self {
            head_request,
            state: State::Head,
            status: 0,
            version: Version::HTTP_11,
            keep_alive: false,
            body_bytes: 0,
            received: false,
            head_scanned: 0,
            #[cfg(test)]
            head_parses: 0,
        }
    }

    pub(crate) fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Whether the connection may carry another request (meaningful once done).
    pub(crate) fn keep_alive(&self) -> bool {
        self.keep_alive
    }

    /// The response read (meaningful once done).
    pub(crate) fn reply(&self) -> HttpReply {
        HttpReply {
            status: StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            version: self.version,
            body_bytes: self.body_bytes,
        }
    }

    /// Parses what it can of `data`; the number of bytes used. Zero with bytes left means more
    /// are needed behind them (an incomplete head).
    pub(crate) fn feed(&mut self, data: &[u8]) -> Result<usize, ParseError> {
        if !data.is_empty() {
            self.received = true;
        }
        match self.state {
            State::Head => self.head(data),
            State::Fixed(left) => {
                let n = left.min(data.len() as u64);
                self.body_bytes += n;
                self.state = if n == left {
                    State::Done
                } else {
                    State::Fixed(left - n)
                };
                Ok(n as usize)
            }
            State::UntilEof => {
                self.body_bytes += data.len() as u64;
                Ok(data.len())
            }
            State::Chunked(_) => self.chunked(data),
            State::Done => Ok(0),
        }
    }

    /// The connection ended: fine only for a body that runs to the end.
    pub(crate) fn eof(&mut self) -> Result<(), ParseError> {
        match self.state {
            State::UntilEof | State::Done => {
                self.state = State::Done;
                Ok(())
            }
            _ => Err(ParseError::Closed {
                received: self.received,
            }),
        }
    }

    /// httparse reads a head from its first byte, so it runs once the head is all there:
    /// searching only the bytes that arrived since for the blank line that ends it keeps a head
    /// arriving in small pieces linear in its size (reparsing it at each piece was quadratic).
    fn head(&mut self, data: &[u8]) -> Result<usize, ParseError> {
        // Two bytes back: the end may straddle the pieces ("\n" | "\r\n").
        let from = self.head_scanned.saturating_sub(2).min(data.len());
        if !ends_head(&data[from..]) {
            if data.len() >= MAX_HEAD {
                return Err(ParseError::TooLarge("head"));
            }
            self.head_scanned = data.len();
            return Ok(0);
        }
        self.head_scanned = 0;
        #[cfg(test)]
        {
            self.head_parses += 1;
        }
        let mut headers = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut response = httparse::Response::new(&mut []);
        let mut config = httparse::ParserConfig::default();
        config
            .allow_spaces_after_header_name_in_responses(true)
            .allow_obsolete_multiline_headers_in_responses(true);
        let used =
            match config.parse_response_with_uninit_headers(&mut response, data, &mut headers) {
                Ok(httparse::Status::Complete(n)) => n,
                Ok(httparse::Status::Partial) if data.len() >= MAX_HEAD => {
                    return Err(ParseError::TooLarge("head"));
                }
                Ok(httparse::Status::Partial) => return Ok(0),
                Err(httparse::Error::TooManyHeaders) => {
                    return Err(ParseError::TooLarge("head (header count)"));
                }
                Err(e) => return Err(ParseError::Invalid(e.to_string())),
            };
        if used > MAX_HEAD {
            return Err(ParseError::TooLarge("head"));
        }
        let status = response.code.unwrap_or(0);
        if !(100..=599).contains(&status) {
            return Err(ParseError::Invalid(format!("status {status}")));
        }
        if (100..200).contains(&status) && status != 101 {
            // Interim (100 Continue, 103 Early Hints): the final response follows.
            return Ok(used);
        }
        let http11 = response.version == Some(1);
        let mut close = false;
        let mut keep_alive_token = false;
        let mut length: Option<u64> = None;
        // Some(last coding is chunked) once Transfer-Encoding is seen.
        let mut chunked: Option<bool> = None;
        for h in response.headers.iter() {
            if h.name.eq_ignore_ascii_case("content-length") {
                for part in h.value.split(|&b| b == b',') {
                    let n = parse_length(part.trim_ascii()).ok_or_else(|| {
                        ParseError::Invalid(format!(
                            "content-length {:?}",
                            String::from_utf8_lossy(h.value)
                        ))
                    })?;
                    if length.is_some_and(|l| l != n) {
                        return Err(ParseError::Invalid(
                            "conflicting content-length values".into(),
                        ));
                    }
                    length = Some(n);
                }
            } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                let last = h.value.rsplit(|&b| b == b',').next().unwrap_or_default();
                chunked = Some(last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
            } else if h.name.eq_ignore_ascii_case("connection") {
                for token in h.value.split(|&b| b == b',') {
                    let token = token.trim_ascii();
                    close |= token.eq_ignore_ascii_case(b"close");
                    keep_alive_token |= token.eq_ignore_ascii_case(b"keep-alive");
                }
            }
        }
        self.status = status;
        self.version = if http11 {
            Version::HTTP_11
        } else {
            Version::HTTP_10
        };
        self.keep_alive = !close && (http11 || keep_alive_token) && status != 101;
        self.state = if self.head_request || matches!(status, 101 | 204 | 304) {
            State::Done
        } else if let Some(chunked) = chunked {
            // Transfer-Encoding overrides Content-Length; a message with both may be an attempt
            // at smuggling, so its connection is not reused.
            if length.is_some() {
                self.keep_alive = false;
            }
            if chunked {
                State::Chunked(Chunk::Size { size: 0, digits: 0 })
            } else {
                self.keep_alive = false;
                State::UntilEof
            }
        } else {
            match length {
                Some(0) => State::Done,
                Some(n) => State::Fixed(n),
                None => {
                    self.keep_alive = false;
                    State::UntilEof
                }
            }
        };
        Ok(used)
    }

    fn chunked(&mut self, data: &[u8]) -> Result<usize, ParseError> {
        let bad = |what: &str| Err(ParseError::Invalid(format!("chunked body: {what}")));
        let mut i = 0;
        while i < data.len() {
            let State::Chunked(chunk) = self.state else {
                break;
            };
            if let Chunk::Data(left) = chunk {
                let n = left.min((data.len() - i) as u64);
                self.body_bytes += n;
                i += n as usize;
                self.state = State::Chunked(if n == left {
                    Chunk::DataCr
                } else {
                    Chunk::Data(left - n)
                });
                continue;
            }
            let b = data[i];
            i += 1;
            let next = match chunk {
                Chunk::Size { size, digits } => match (b as char).to_digit(16) {
                    Some(d) if digits < 16 => Chunk::Size {
                        size: size << 4 | u64::from(d),
                        digits: digits + 1,
                    },
                    Some(_) => return bad("chunk size over 16 hex digits"),
                    None if digits == 0 => return bad("no chunk size"),
                    None if b == b'\r' => Chunk::SizeLf { size },
                    None if matches!(b, b';' | b' ' | b'\t') => Chunk::Ext { size, len: 1 },
                    None => return bad("chunk size"),
                },
                Chunk::Ext { size, len } => match b {
                    b'\r' => Chunk::SizeLf { size },
                    b'\n' => return bad("bare LF in a chunk-size line"),
                    _ if len >= MAX_CHUNK_EXT => {
                        return Err(ParseError::TooLarge("chunk extension"));
                    }
                    _ => Chunk::Ext { size, len: len + 1 },
                },
                Chunk::SizeLf { size } => match b {
                    b'\n' if size == 0 => Chunk::Trailer { line: 0, total: 0 },
                    b'\n' => Chunk::Data(size),
                    _ => return bad("no LF after a chunk size"),
                },
                // Taken in bulk above; one byte here is the same thing.
                Chunk::Data(left) => {
                    self.body_bytes += 1;
                    if left <= 1 {
                        Chunk::DataCr
                    } else {
                        Chunk::Data(left - 1)
                    }
                }
                Chunk::DataCr => match b {
                    b'\r' => Chunk::DataLf,
                    _ => return bad("chunk data longer than its size"),
                },
                Chunk::DataLf => match b {
                    b'\n' => Chunk::Size { size: 0, digits: 0 },
                    _ => return bad("no LF after chunk data"),
                },
                Chunk::Trailer { line, total } => match b {
                    _ if total >= MAX_HEAD => return Err(ParseError::TooLarge("trailer")),
                    b'\r' => Chunk::TrailerLf {
                        empty: line == 0,
                        total: total + 1,
                    },
                    b'\n' => return bad("bare LF in the trailer"),
                    _ => Chunk::Trailer {
                        line: line + 1,
                        total: total + 1,
                    },
                },
                Chunk::TrailerLf { empty, total } => match b {
                    b'\n' if empty => {
                        self.state = State::Done;
                        return Ok(i);
                    }
                    b'\n' => Chunk::Trailer { line: 0, total },
                    _ => return bad("no LF in the trailer"),
                },
            };
            self.state = State::Chunked(next);
        }
        Ok(i)
    }
}

/// A Content-Length value: decimal digits only, within u64.
/// Whether `data` holds the blank line that ends a head: LF then LF or CRLF (httparse takes a
/// bare LF as a line end).
fn ends_head(data: &[u8]) -> bool {
    data.iter().enumerate().any(|(i, &b)| {
        b == b'\n' && matches!(data.get(i + 1..), Some([b'\n', ..] | [b'\r', b'\n', ..]))
    })
}

fn parse_length(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    v.iter().try_fold(0u64, |n, d| {
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::{HttpRequester, HttpTarget};

    /// Feeds `input` to a parser in pieces of `piece` bytes, as a connection would: bytes the
    /// parser left unused are fed again with the next piece behind them, the end of the input
    /// is the connection's end. The parser once done, and the bytes left after the response.
    fn parse_split(
        input: &[u8],
        head_request: bool,
        piece: usize,
    ) -> Result<(ResponseParser, usize), ParseError> {
        let mut parser = ResponseParser::new(head_request);
        let mut buf = Vec::new();
        let mut start = 0;
        for (i, chunk) in input.chunks(piece.max(1)).enumerate() {
            buf.extend_from_slice(chunk);
            while start < buf.len() && !parser.is_done() {
                let used = parser.feed(&buf[start..])?;
                assert!(used <= buf.len() - start, "used more than given");
                if used == 0 {
                    break;
                }
                start += used;
            }
            if parser.is_done() {
                let fed = (i + 1) * piece.max(1);
                return Ok((parser, buf.len() - start + input.len().saturating_sub(fed)));
            }
        }
        parser.eof()?;
        Ok((parser, buf.len() - start))
    }

    /// `parse_split` with every piece size from 1 to the whole input, all agreeing.
    fn parse(input: &[u8], head_request: bool) -> Result<(ResponseParser, usize), ParseError> {
        let whole = parse_split(input, head_request, input.len());
        for piece in 1..input.len() {
            let split = parse_split(input, head_request, piece);
            match (&whole, &split) {
                (Ok((a, la)), Ok((b, lb))) => {
                    assert_eq!(
                        (a.reply(), a.keep_alive(), la),
                        (b.reply(), b.keep_alive(), lb)
                    );
                }
                (Err(a), Err(b)) => assert_eq!(
                    std::mem::discriminant(a),
                    std::mem::discriminant(b),
                    "{a:?} / {b:?} at pieces of {piece}"
                ),
                _ => panic!("{whole:?} vs {split:?} at pieces of {piece}"),
            }
        }
        whole
    }

    fn ok(input: &str) -> Parsed {
        let (p, left) = parse(input.as_bytes(), false).unwrap_or_else(|e| panic!("{e:?}"));
        assert!(p.is_done());
        let r = p.reply();
        (
            r.status.as_u16(),
            r.version,
            r.body_bytes,
            p.keep_alive(),
            left,
        )
    }

    fn err(input: &[u8]) -> ParseError {
        parse(input, false).expect_err("a parse error")
    }

    /// A parsed response: status, version, body bytes, keep-alive, bytes left over.
    type Parsed = (u16, Version, u64, bool, usize);

    /// Each response, and what it parses to.
    fn assert_parsed(cases: &[(&str, Parsed)]) {
        for (input, want) in cases {
            assert_eq!(ok(input), *want, "{input:?}");
        }
    }

    const V10: Version = Version::HTTP_10;
    const V11: Version = Version::HTTP_11;

    #[test]
    fn content_length_body() {
        assert_parsed(&[
            (
                "HTTP/1.1 200 OK\r\nServer: x\r\nContent-Length: 5\r\n\r\nhello",
                (200, V11, 5, true, 0),
            ),
            // Identical repeated values are one length.
            (
                "HTTP/1.1 201 Created\r\ncontent-length: 2, 2\r\nContent-Length:2\r\n\r\nok",
                (201, V11, 2, true, 0),
            ),
            (
                "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n",
                (404, V11, 0, true, 0),
            ),
            // Bytes after the response are left over (the connection is then not reused).
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nxHTTP/1.1",
                (200, V11, 1, true, 8),
            ),
        ]);
    }

    #[test]
    fn chunked_body_with_extensions_and_trailers() {
        assert_parsed(&[
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n\
                 5;name=value\r\nhello\r\nA \r\n0123456789\r\n0\r\nX-Trailer: 1\r\nY: 2\r\n\r\n",
                (200, V11, 15, true, 0),
            ),
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
                (200, V11, 0, true, 0),
            ),
            // Chunked wins over Content-Length, and the connection is not reused.
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 99\r\nTransfer-Encoding: chunked\r\n\r\n\
                 3\r\nabc\r\n0\r\n\r\n",
                (200, V11, 3, false, 0),
            ),
            // A coding other than chunked last: the body runs to the close.
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n3\r\nabc",
                (200, V11, 6, false, 0),
            ),
        ]);
    }

    #[test]
    fn connection_close_and_http_1_0() {
        assert_parsed(&[
            (
                "HTTP/1.1 200 OK\r\nConnection: Close\r\nContent-Length: 2\r\n\r\nok",
                (200, V11, 2, false, 0),
            ),
            (
                "HTTP/1.1 200 OK\r\nConnection: upgrade, close\r\nContent-Length: 0\r\n\r\n",
                (200, V11, 0, false, 0),
            ),
            // HTTP/1.0 closes unless asked to keep alive; without a length the body is up to
            // the close.
            (
                "HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
                (200, V10, 2, false, 0),
            ),
            (
                "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok",
                (200, V10, 2, true, 0),
            ),
            (
                "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\n\r\nuntil the end",
                (200, V10, 13, false, 0),
            ),
            (
                "HTTP/1.1 200 OK\r\n\r\nuntil the end",
                (200, V11, 13, false, 0),
            ),
        ]);
    }

    #[test]
    fn responses_without_a_body() {
        let with_length = "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n";
        let (p, left) = parse(with_length.as_bytes(), true).unwrap();
        assert_eq!((p.reply().body_bytes, p.keep_alive(), left), (0, true, 0));
        assert_parsed(&[
            (
                "HTTP/1.1 204 No Content\r\nContent-Length: 10\r\n\r\n",
                (204, V11, 0, true, 0),
            ),
            (
                "HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n",
                (304, V11, 0, true, 0),
            ),
            // Interim responses are skipped.
            (
                "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n\
                 HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx",
                (200, V11, 1, true, 0),
            ),
        ]);
    }

    #[test]
    fn malformed_responses_are_errors() {
        for bad in [
            &b"garbage\r\n\r\n"[..],
            b"HTTP/2 200 OK\r\n\r\n",
            b"HTTP/1.1 abc OK\r\n\r\n",
            b"HTTP/1.1 099 Low\r\nContent-Length: 0\r\n\r\n",
            b"HTTP/1.1 600 High\r\nContent-Length: 0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nBad Header\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nX: a\rb\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: abc\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: +1\r\n\r\nx",
            b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nx",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1,\r\n\r\nx",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\nx\r\n0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nxy\r\n0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\n0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1;a\nb\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX: 1\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX: 1\rx",
        ] {
            let e = err(bad);
            assert!(
                matches!(e, ParseError::Invalid(_)),
                "{:?}: {e:?}",
                String::from_utf8_lossy(bad)
            );
            assert_eq!(e.failure().kind, "protocol");
        }
        // A chunk size beyond u64.
        let huge = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10000000000000000\r\n";
        assert!(matches!(err(huge), ParseError::Invalid(_)));
    }

    #[test]
    fn oversized_heads_extensions_and_trailers_are_errors() {
        let mut long = b"HTTP/1.1 200 OK\r\n".to_vec();
        while long.len() <= MAX_HEAD {
            long.extend_from_slice(b"X-Filler: ");
            long.resize(long.len() + 1000, b'x');
            long.extend_from_slice(b"\r\n");
        }
        // Never complete: the bound, not the end, stops it.
        assert_eq!(
            parse_split(&long, false, 4096).unwrap_err(),
            ParseError::TooLarge("head")
        );
        let mut many = b"HTTP/1.1 200 OK\r\n".to_vec();
        for i in 0..=MAX_HEADERS {
            many.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
        }
        many.extend_from_slice(b"Content-Length: 0\r\n\r\n");
        assert!(matches!(
            parse_split(&many, false, many.len()).unwrap_err(),
            ParseError::TooLarge(_)
        ));
        let mut ext = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1;".to_vec();
        ext.resize(ext.len() + MAX_CHUNK_EXT + 1, b'a');
        assert_eq!(
            parse_split(&ext, false, 1000).unwrap_err(),
            ParseError::TooLarge("chunk extension")
        );
        let mut trailer = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n".to_vec();
        while trailer.len() < 2 * MAX_HEAD {
            trailer.extend_from_slice(b"X: 1\r\n");
        }
        assert_eq!(
            parse_split(&trailer, false, 4096).unwrap_err(),
            ParseError::TooLarge("trailer")
        );
    }

    /// A 60 KiB head arriving 16 bytes at a time is parsed once, when its end is there (it
    /// was reparsed at every piece: 1.3 s instead of 4 ms), and reads as it does whole.
    #[test]
    fn a_head_in_small_pieces_is_parsed_once() {
        let mut head = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n".to_vec();
        while head.len() < 60 << 10 {
            head.extend_from_slice(b"X-Filler: ");
            head.resize(head.len() + 1000, b'x');
            head.extend_from_slice(b"\r\n");
        }
        head.extend_from_slice(b"\r\nok");
        let (parser, left) = parse_split(&head, false, 16).unwrap();
        assert_eq!(
            (
                parser.reply().status.as_u16(),
                parser.reply().body_bytes,
                left
            ),
            (200, 2, 0)
        );
        assert_eq!(parser.head_parses, 1);
        // An interim response then the final one: each head parsed once.
        let (parser, _) = parse_split(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n",
            false,
            3,
        )
        .unwrap();
        assert_eq!(
            (parser.reply().status.as_u16(), parser.head_parses),
            (204, 2)
        );
    }

    #[test]
    fn a_connection_ending_early_is_a_reset() {
        for (cut, received) in [
            (&b""[..], false),
            (b"HTTP/1.1 200", true),
            (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhel", true),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
                true,
            ),
        ] {
            let e = parse_split(cut, false, 7).unwrap_err();
            assert_eq!(e, ParseError::Closed { received });
            assert_eq!(e.failure().kind, "reset");
        }
    }

    #[test]
    fn hostile_bytes_never_panic() {
        // Valid responses with bytes flipped, cut and spliced, and plain noise, fed in pieces
        // of every small size: each ends in a result, within the bounds.
        let seeds: [&[u8]; 4] = [
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;e=1\r\nhello\r\n0\r\nT: 1\r\n\r\n",
            b"HTTP/1.0 100 Continue\r\n\r\nHTTP/1.0 204 No\r\nConnection: keep-alive\r\n\r\n",
            b"HTTP/1.1 200 OK\r\n\r\nbody",
        ];
        let alphabet = b"HTTP/1.0 2\r\n:;chunkedContent-Length0123456789abcdefF \t\x00\xff";
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        for round in 0..3000 {
            let mut input = seeds[round % seeds.len()].to_vec();
            for _ in 0..1 + next() % 4 {
                let at = (next() as usize) % (input.len() + 1);
                let byte = alphabet[(next() as usize) % alphabet.len()];
                match next() % 3 {
                    0 if at < input.len() => input[at] = byte,
                    1 => input.insert(at, byte),
                    _ => input.truncate(at),
                }
            }
            for piece in [1, 2, 3, 5, 64] {
                let _ = parse_split(&input, next() % 5 == 0, piece);
            }
        }
        for _ in 0..500 {
            let noise: Vec<u8> = (0..next() % 300).map(|_| next() as u8).collect();
            let _ = parse_split(&noise, false, 1 + (next() as usize) % 50);
        }
    }

    #[test]
    fn requests_are_serialized_once_with_host_headers_and_length() {
        let requester = |target: HttpTarget| HttpRequester::new(&target, 1).unwrap();
        let get = requester(HttpTarget {
            url: "http://127.0.0.1:8080/a?b=1".into(),
            method: "get".into(),
            headers: vec![("X-Probe".into(), "urn:a:b".into())],
            ..Default::default()
        });
        assert_eq!(
            String::from_utf8_lossy(get.http1().unwrap().request_bytes()),
            "GET /a?b=1 HTTP/1.1\r\nhost: 127.0.0.1:8080\r\nx-probe: urn:a:b\r\n\r\n"
        );
        let post = requester(HttpTarget {
            url: "https://h".into(),
            method: "POST".into(),
            headers: vec![
                ("Host".into(), "other".into()),
                ("Content-Length".into(), "99".into()),
            ],
            body: Some("ping".into()),
            ..Default::default()
        });
        assert_eq!(
            String::from_utf8_lossy(post.http1().unwrap().request_bytes()),
            "POST / HTTP/1.1\r\nhost: other\r\ncontent-length: 4\r\n\r\nping"
        );
        let empty_put = requester(HttpTarget {
            url: "h/x".into(),
            method: "PUT".into(),
            ..Default::default()
        });
        assert!(
            String::from_utf8_lossy(empty_put.http1().unwrap().request_bytes())
                .ends_with("content-length: 0\r\n\r\n")
        );
    }

    /// A server that answers each connection as `script` says: for every request read, the
    /// reply to write, or `None` to close without one. Counts the connections it accepted.
    async fn scripted(
        scripts: Vec<Vec<Option<&'static str>>>,
    ) -> (u16, tokio::task::JoinHandle<usize>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            let mut accepted = 0;
            for script in scripts {
                let (mut conn, _) = listener.accept().await.unwrap();
                accepted += 1;
                for reply in script {
                    let mut seen = Vec::new();
                    while !seen.ends_with(b"\r\n\r\n") {
                        let mut b = [0u8; 256];
                        let n = conn.read(&mut b).await.unwrap();
                        assert!(n > 0, "client closed early");
                        seen.extend_from_slice(&b[..n]);
                    }
                    match reply {
                        Some(r) => conn.write_all(r.as_bytes()).await.unwrap(),
                        None => break,
                    }
                }
            }
            accepted
        });
        (port, server)
    }

    #[tokio::test]
    async fn keep_alive_close_and_a_stale_connection_retried_once() {
        const KEEP: &str = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
        const CLOSE: &str = "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok";
        let (port, server) = scripted(vec![
            // Two requests kept alive, then `Connection: close`.
            vec![Some(KEEP), Some(KEEP), Some(CLOSE)],
            // Kept alive, then closed under the next request: it is retried ...
            vec![Some(KEEP), None],
            // ... on a new connection.
            vec![Some(KEEP)],
            // A fresh connection closed before replying fails.
            vec![None],
        ])
        .await;
        let r = HttpRequester::new(
            &HttpTarget {
                url: format!("http://127.0.0.1:{port}/"),
                method: "GET".into(),
                ..Default::default()
            },
            1,
        )
        .unwrap();
        for i in 0..5 {
            let reply = r
                .send()
                .await
                .unwrap_or_else(|e| panic!("request {i}: {e}"));
            assert_eq!((reply.status, reply.body_bytes), (StatusCode::OK, 2));
        }
        // The last connection of the script was kept: the server closed it after its one
        // reply without saying so, so this request finds it closed (or is retried) and
        // opens the script's last connection, which closes without a reply.
        let failure = r.send().await.unwrap_err();
        assert_eq!(failure.kind, "reset", "{failure}");
        assert!(
            failure.detail.contains("before the response began"),
            "{failure}"
        );
        assert_eq!(server.await.unwrap(), 4);
    }
}
