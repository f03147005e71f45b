//! The connection against raw upstreams that answer canned bytes.

use super::*;
use bytes::Bytes;
use http::Request;
use std::sync::{Arc, Mutex};
use tokio::io::AsyncReadExt;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

/// A raw upstream on 127.0.0.1:0: on one connection, answers each request with the
/// next canned bytes, then closes. Returns its address and the requests it read.
async fn upstream(answers: Vec<&'static [u8]>) -> (String, Arc<Mutex<Vec<Vec<u8>>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        let (mut sock, _) = listener.accept().await.unwrap();
        for answer in answers {
            let request = read_request(&mut sock).await;
            log.lock().unwrap().push(request);
            sock.write_all(answer).await.unwrap();
        }
        // Linger so the client sees the answer before the close.
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    });
    (addr, seen)
}

/// Reads one request: the head, then a Content-Length or chunked body.
async fn read_request(sock: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    let mut byte = [0u8; 1];
    while !got.ends_with(b"\r\n\r\n") {
        if sock.read(&mut byte).await.unwrap() == 0 {
            return got;
        }
        got.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&got).to_lowercase();
    if let Some(len) = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .and_then(|v| v.trim().parse::<usize>().ok())
    {
        let mut body = vec![0; len];
        sock.read_exact(&mut body).await.unwrap();
        got.extend(body);
    } else if head.contains("transfer-encoding: chunked") {
        while !got.ends_with(b"\r\n0\r\n\r\n") {
            sock.read_exact(&mut byte).await.unwrap();
            got.push(byte[0]);
        }
    }
    got
}

type Released = Arc<Mutex<Option<Conn<TcpStream>>>>;

/// Sends `req` on `conn`; returns the status, the headers, the body (or its error)
/// and the connection if it came back for reuse.
async fn exchange(
    conn: Conn<TcpStream>,
    req: Request<Body>,
) -> Result<(Response<()>, Result<Bytes, String>, Option<Conn<TcpStream>>), Error> {
    let released: Released = Arc::default();
    let slot = released.clone();
    let (parts, body) = req.into_parts();
    let host = parts.headers["host"].clone();
    let extra = parts
        .extensions
        .get::<(HeaderName, HeaderValue)>()
        .map(|(n, v)| (n, v));
    let head = RequestRef {
        method: &parts.method,
        target: parts.uri.path_and_query().map_or("/", |p| p.as_str()),
        headers: &parts.headers,
        rewrite: Rewrite::NONE,
        extra: extra.as_slice(),
    };
    let resp = send(conn, head, &host, body, move |c| {
        *slot.lock().unwrap() = Some(c)
    })
    .await
    .map_err(|f| f.error)?;
    let (parts, body) = resp.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .map_err(|e| e.to_string());
    let conn = released.lock().unwrap().take();
    Ok((Response::from_parts(parts, ()), body, conn))
}

async fn connect(addr: &str) -> Conn<TcpStream> {
    Conn::new(TcpStream::connect(addr).await.unwrap())
}

fn get(path: &str) -> Request<Body> {
    Request::get(path)
        .header("host", "upstream")
        .body(crate::body::empty())
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[tokio::test]
async fn content_length_answers_are_read_exactly_and_the_connection_is_reused() {
    let (addr, seen) = upstream(vec![
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: 1\r\n\r\nhello",
        b"HTTP/1.1 201 Created\r\ncontent-length: 2 , 2\r\n\r\nok",
    ])
    .await;
    let (resp, body, conn) = exchange(connect(&addr).await, get("/a?b=1")).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-a"], "1");
    assert_eq!(body.unwrap(), "hello");
    let mut conn = conn.expect("reusable");
    assert!(conn.is_reusable());
    let (resp, body, conn) = exchange(conn, get("/second")).await.unwrap();
    assert_eq!(
        (resp.status().as_u16(), body.unwrap()),
        (201, Bytes::from("ok"))
    );
    assert!(conn.is_some());
    let seen = seen.lock().unwrap();
    assert_eq!(
        text(&seen[0]),
        "GET /a?b=1 HTTP/1.1\r\nhost: upstream\r\n\r\n"
    );
    assert!(text(&seen[1]).starts_with("GET /second HTTP/1.1\r\n"));
}

#[tokio::test]
async fn chunked_answers_are_decoded_with_extensions_and_trailers() {
    let (addr, _) = upstream(vec![
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n",
    ])
    .await;
    let (_, body, conn) = exchange(connect(&addr).await, get("/")).await.unwrap();
    assert_eq!(body.unwrap(), "hello world");
    assert!(
        conn.is_some(),
        "a clean chunked end leaves the connection reusable"
    );
}

#[tokio::test]
async fn anything_unusual_closes_the_connection_instead_of_reusing_it() {
    let cases: [&'static [u8]; 4] = [
        // Bytes after the answer.
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA",
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
        // Chunked beside Content-Length: chunked wins, the connection is not trusted.
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
    ];
    for answer in cases {
        let (addr, _) = upstream(vec![answer]).await;
        let (_, body, conn) = exchange(connect(&addr).await, get("/")).await.unwrap();
        assert_eq!(body.unwrap(), "ok", "{}", text(answer));
        assert!(conn.is_none(), "not reused after {}", text(answer));
    }
}

#[tokio::test]
async fn an_answer_without_a_length_runs_until_the_upstream_closes() {
    let (addr, _) = upstream(vec![b"HTTP/1.1 200 OK\r\n\r\nall of this"]).await;
    let (_, body, conn) = exchange(connect(&addr).await, get("/")).await.unwrap();
    assert_eq!(body.unwrap(), "all of this");
    assert!(conn.is_none());
}

#[tokio::test]
async fn head_204_and_304_answers_have_no_body() {
    let (addr, _) = upstream(vec![
        b"HTTP/1.1 204 No Content\r\n\r\n",
        b"HTTP/1.1 304 Not Modified\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n",
    ])
    .await;
    let (resp, body, conn) = exchange(connect(&addr).await, get("/")).await.unwrap();
    assert_eq!((resp.status().as_u16(), body.unwrap()), (204, Bytes::new()));
    let (resp, body, conn) = exchange(conn.expect("reused"), get("/")).await.unwrap();
    assert_eq!((resp.status().as_u16(), body.unwrap()), (304, Bytes::new()));
    let head = Request::head("/")
        .header("host", "u")
        .body(crate::body::empty())
        .unwrap();
    let (resp, body, conn) = exchange(conn.expect("reused"), head).await.unwrap();
    assert_eq!(resp.headers()["content-length"], "10");
    assert_eq!(body.unwrap(), "");
    assert!(conn.is_none(), "a HEAD answer's body might still come");
}

#[tokio::test]
async fn bodyless_answers_that_announce_a_body_free_no_connection() {
    for answer in [
        &b"HTTP/1.1 204 No Content\r\nContent-Length: 47\r\n\r\n"[..],
        b"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n",
        b"HTTP/1.1 204 No Content\r\nTransfer-Encoding: chunked\r\n\r\n",
    ] {
        let (addr, _) = upstream(vec![answer]).await;
        let (_, body, conn) = exchange(connect(&addr).await, get("/")).await.unwrap();
        assert_eq!(body.unwrap(), "");
        assert!(conn.is_none(), "reused after {}", text(answer));
    }
}

#[tokio::test]
async fn interim_answers_are_skipped_and_upgrades_refused() {
    let (addr, _) = upstream(vec![
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx",
    ])
    .await;
    let (resp, body, _) = exchange(connect(&addr).await, get("/")).await.unwrap();
    assert_eq!(
        (resp.status().as_u16(), body.unwrap()),
        (200, Bytes::from("x"))
    );
    let (addr, _) = upstream(vec![
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n",
    ])
    .await;
    let err = exchange(connect(&addr).await, get("/")).await.unwrap_err();
    assert!(err.to_string().contains("switching protocols"), "{err}");
}

#[tokio::test]
async fn malformed_answers_are_errors() {
    let heads: [(&'static [u8], &str); 7] = [
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nx",
            "conflicting",
        ),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\n",
            "invalid content-length",
        ),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 2,\r\n\r\nok",
            "invalid content-length",
        ),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 1e2\r\n\r\n",
            "invalid content-length",
        ),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            "invalid content-length",
        ),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 1, 2\r\n\r\n",
            "conflicting",
        ),
        (b"SMTP ready\r\n\r\n", "malformed"),
    ];
    for (answer, why) in heads {
        let (addr, _) = upstream(vec![answer]).await;
        let err = exchange(connect(&addr).await, get("/")).await.unwrap_err();
        assert!(err.to_string().contains(why), "{}: {err}", text(answer));
    }
    // A bad chunk size fails the body, and the connection is dropped.
    let (addr, _) = upstream(vec![
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ])
    .await;
    let (_, body, conn) = exchange(connect(&addr).await, get("/")).await.unwrap();
    assert!(body.unwrap_err().contains("invalid chunk size"));
    assert!(conn.is_none());
    // Closed mid-body.
    let (addr, _) = upstream(vec![b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc"]).await;
    let (_, body, conn) = exchange(connect(&addr).await, get("/")).await.unwrap();
    assert!(body.unwrap_err().contains("closed mid-body"));
    assert!(conn.is_none());
    // Closed before any answer.
    let (addr, _) = upstream(vec![b""]).await;
    let err = exchange(connect(&addr).await, get("/")).await.unwrap_err();
    assert!(matches!(err, Error::Closed), "{err}");
}

#[tokio::test]
async fn request_bodies_are_framed_by_length_or_chunked() {
    let ok: &'static [u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
    let (addr, seen) = upstream(vec![ok; 4]).await;
    let post = |body: Body| {
        Request::post("/p")
            .header("host", "u")
            .header("transfer-encoding", "gzip")
            .body(body)
            .unwrap()
    };
    let (_, _, conn) = exchange(connect(&addr).await, post(crate::body::full("abc")))
        .await
        .unwrap();
    let (_, _, conn) = exchange(conn.unwrap(), post(crate::body::empty()))
        .await
        .unwrap();
    // A body of unknown length goes chunked.
    let stream = crate::body::chain(Bytes::from("ab"), crate::body::full("cd"));
    let (_, _, conn) = exchange(conn.unwrap(), post(stream)).await.unwrap();
    // A body-less GET announces nothing.
    let (_, _, conn) = exchange(conn.unwrap(), get("/g")).await.unwrap();
    assert!(conn.is_some());
    let seen = seen.lock().unwrap();
    assert_eq!(
        text(&seen[0]),
        "POST /p HTTP/1.1\r\nhost: u\r\ncontent-length: 3\r\n\r\nabc"
    );
    assert_eq!(
        text(&seen[1]),
        "POST /p HTTP/1.1\r\nhost: u\r\ncontent-length: 0\r\n\r\n"
    );
    assert_eq!(
        text(&seen[2]),
        "POST /p HTTP/1.1\r\nhost: u\r\ntransfer-encoding: chunked\r\n\r\n2\r\nab\r\n2\r\ncd\r\n0\r\n\r\n"
    );
    assert_eq!(text(&seen[3]), "GET /g HTTP/1.1\r\nhost: upstream\r\n\r\n");
}

#[tokio::test]
async fn the_extra_header_replaces_one_of_the_same_name_and_host_is_ours() {
    let (addr, seen) = upstream(vec![b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"]).await;
    let mut req = Request::get("/k")
        .header("host", "upstream.example")
        .header("x-api-key", "from-the-client")
        .header("accept", "*/*")
        .body(crate::body::empty())
        .unwrap();
    req.extensions_mut().insert((
        HeaderName::from_static("x-api-key"),
        HeaderValue::from_static("the-real-key"),
    ));
    let (_, body, _) = exchange(connect(&addr).await, req).await.unwrap();
    assert_eq!(body.unwrap(), "");
    assert_eq!(
        text(&seen.lock().unwrap()[0]),
        "GET /k HTTP/1.1\r\nhost: upstream.example\r\naccept: */*\r\nx-api-key: the-real-key\r\n\r\n"
    );
}

#[tokio::test]
async fn a_body_that_does_not_match_its_content_length_is_refused() {
    let (addr, _) = upstream(vec![b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"]).await;
    let stream = crate::body::chain(Bytes::from("ab"), crate::body::full("cd"));
    let req = Request::post("/p")
        .header("host", "u")
        .header("content-length", "10")
        .body(stream)
        .unwrap();
    let err = exchange(connect(&addr).await, req).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("shorter than its announced length"),
        "{err}"
    );
}

#[tokio::test]
async fn an_idle_connection_the_upstream_closed_is_not_reusable() {
    let (addr, _) = upstream(vec![b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"]).await;
    let (_, _, conn) = exchange(connect(&addr).await, get("/")).await.unwrap();
    let mut conn = conn.unwrap();
    assert!(conn.is_reusable());
    // The upstream closes 50 ms after its last answer.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert!(!conn.is_reusable());
}

/// A body of `n` bytes in 64 KiB frames, of unknown length (chunked upstream).
fn big_body(n: usize) -> Body {
    let frames = (0..n.div_ceil(65536)).map(move |i| {
        Ok::<_, BoxError>(hyper::body::Frame::data(Bytes::from(vec![
            b'a' + (i % 26)
                as u8;
            65536.min(
                n - i * 65536
            )
        ])))
    });
    http_body_util::StreamBody::new(futures_util_stream(frames)).boxed_unsync()
}

fn futures_util_stream<I: Iterator + Unpin>(it: I) -> impl futures_core::Stream<Item = I::Item> {
    struct S<I>(I);
    impl<I: Iterator + Unpin> futures_core::Stream for S<I> {
        type Item = I::Item;
        fn poll_next(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<I::Item>> {
            Poll::Ready(self.0.next())
        }
    }
    S(it)
}

#[tokio::test]
async fn an_early_answer_during_an_upload_is_passed_on() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        let (mut sock, _) = listener.accept().await.unwrap();
        // Read the head only, answer 413 at once and close without reading the body.
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            sock.read_exact(&mut byte).await.unwrap();
            head.push(byte[0]);
        }
        sock.write_all(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 8\r\nConnection: close\r\n\r\ntoo big!")
            .await
            .unwrap();
        let _ = sock.shutdown().await;
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    });
    let req = Request::post("/upload")
        .header("host", "u")
        .body(big_body(32 << 20))
        .unwrap();
    let (resp, body, conn) = exchange(connect(&addr).await, req).await.unwrap();
    assert_eq!(resp.status(), 413);
    assert_eq!(body.unwrap(), "too big!");
    assert!(conn.is_none());
}

#[tokio::test]
async fn an_upstream_that_answers_while_reading_the_body_is_full_duplex() {
    const SIZE: usize = 24 << 20;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        let (sock, _) = listener.accept().await.unwrap();
        let (mut rd, mut wr) = sock.into_split();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            rd.read_exact(&mut byte).await.unwrap();
            head.push(byte[0]);
        }
        // Echo the chunked body back as it comes, chunk framing and all, before
        // having read all of it.
        wr.write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            .await
            .unwrap();
        let mut buf = vec![0u8; 65536];
        loop {
            let n = rd.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            wr.write_all(&buf[..n]).await.unwrap();
            if buf[..n].ends_with(b"0\r\n\r\n") {
                break;
            }
        }
    });
    let req = Request::post("/echo")
        .header("host", "u")
        .body(big_body(SIZE))
        .unwrap();
    let run = exchange(connect(&addr).await, req);
    let (resp, body, _) = tokio::time::timeout(std::time::Duration::from_secs(30), run)
        .await
        .expect("no deadlock")
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body = body.unwrap();
    assert_eq!(body.len(), SIZE);
    assert!(body.iter().take(65536).all(|b| *b == b'a'));
}
