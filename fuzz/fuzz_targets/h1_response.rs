//! The upstream HTTP/1.1 client (`src/upstream/h1`) against hyper's client on the same
//! answer bytes. We may refuse answers hyper takes (we are stricter on purpose: a
//! Content-Length next to Transfer-Encoding, say), but whenever both deliver a whole
//! body, it is the same status and the same bytes; and we never deliver a whole body
//! where hyper's body fails.
#![no_main]

use api_key_rotator::headers::Rewrite;
use api_key_rotator::upstream::h1::{Conn, RequestRef, send};
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method};
use http_body_util::{BodyExt, Empty};
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

/// What a client made of the answer: the status and the body (or that it failed).
type Seen = Option<(u16, Result<Bytes, ()>)>;

/// An upstream that answers `data`, then ends its side; it reads (and drops) the request.
fn upstream(data: &[u8]) -> DuplexStream {
    let (client, mut server) = tokio::io::duplex(1 << 20);
    let data = data.to_vec();
    tokio::spawn(async move {
        let _ = server.write_all(&data).await;
        let _ = server.shutdown().await;
        let mut sink = [0u8; 4096];
        while matches!(server.read(&mut sink).await, Ok(n) if n > 0) {}
    });
    client
}

/// The status and the whole body (or that it failed).
async fn seen<B>(resp: http::Response<B>) -> (u16, Result<Bytes, ()>)
where
    B: hyper::body::Body<Data = Bytes>,
{
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .map_err(drop);
    (status, body)
}

async fn ours(data: &[u8]) -> Seen {
    let headers = HeaderMap::new();
    let head = RequestRef {
        method: &Method::GET,
        target: "/",
        headers: &headers,
        rewrite: Rewrite::NONE,
        extra: &[],
    };
    let host = HeaderValue::from_static("upstream");
    let resp = send(
        Conn::new(upstream(data)),
        head,
        &host,
        api_key_rotator::body::empty(),
        |_| {},
    )
    .await
    .ok()?;
    Some(seen(resp).await)
}

async fn hyper(data: &[u8]) -> Seen {
    let io = hyper_util::rt::TokioIo::new(upstream(data));
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.ok()?;
    tokio::spawn(conn);
    let req = http::Request::get("/")
        .header("host", "upstream")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = sender.send_request(req).await.ok()?;
    Some(seen(resp).await)
}

fuzz_target!(|data: &[u8]| {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let limit = std::time::Duration::from_secs(5);
        let ours = tokio::time::timeout(limit, ours(data))
            .await
            .expect("ours hangs");
        let theirs = tokio::time::timeout(limit, hyper(data))
            .await
            .unwrap_or(None);
        if let (Some((s1, Ok(b1))), Some((s2, b2))) = (&ours, &theirs) {
            // 1xx: hyper skips informational answers and reads on; we hand them over.
            if *s2 >= 200 && *s1 >= 200 {
                assert_eq!(s1, s2, "status differs");
                match b2 {
                    Ok(b2) => assert_eq!(b1, b2, "body bytes differ"),
                    Err(()) => panic!(
                        "we delivered a whole body ({} bytes) where hyper's failed",
                        b1.len()
                    ),
                }
            }
        }
    });
});
