//! The floor for sluice's HTTP/1.1 path: the least a hyper-based forward proxy does per request,
//! built the way sluice's data path is (hyper's server; hyper's connection-level client with
//! each upstream connection driven by the request's own task and kept alive in a pool; a tokio
//! multi-thread runtime sized by `TOKIO_WORKER_THREADS`), with nothing else: no routing, no
//! telemetry, no policy. `bench/run.sh` measures it as the `hyper-floor` target, so the gap
//! between sluice and nginx splits into what hyper and tokio cost and what sluice adds on top.
//!
//! `cargo run --release --example bare_proxy -p sluice-proxy -- 127.0.0.1:28088 127.0.0.1:28080`

use std::convert::Infallible;
use std::future::{poll_fn, Future};
use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{Either, Empty};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

type Conn = (
    http1::SendRequest<Incoming>,
    http1::Connection<TokioIo<TcpStream>, Incoming>,
);

/// Idle keep-alive connections to the one upstream.
#[derive(Default)]
struct Pool {
    idle: Mutex<Vec<Conn>>,
}

/// A response body that drives its connection and returns it to the pool once read.
struct PoolBody {
    body: Incoming,
    conn: Option<Conn>,
    pool: Arc<Pool>,
    ended: bool,
    finished: bool,
}

impl Body for PoolBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        if let (false, Some((_, driver))) = (this.ended, this.conn.as_mut()) {
            this.ended = Pin::new(driver).poll(cx).is_ready();
        }
        let frame = Pin::new(&mut this.body).poll_frame(cx);
        this.finished |= matches!(frame, Poll::Ready(None));
        frame
    }
    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }
    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for PoolBody {
    fn drop(&mut self) {
        if !self.ended && (self.finished || self.body.is_end_stream()) {
            if let Some(c) = self.conn.take() {
                self.pool.idle.lock().expect("pool").push(c);
            }
        }
    }
}

async fn send(
    pool: &Arc<Pool>,
    upstream: SocketAddr,
    req: Request<Incoming>,
) -> Result<Response<PoolBody>, Box<dyn std::error::Error + Send + Sync>> {
    let mut conn = loop {
        let idle = pool.idle.lock().expect("pool").pop();
        match idle {
            Some(mut c) => {
                let ready = poll_fn(|cx| {
                    Poll::Ready(
                        Pin::new(&mut c.1).poll(cx).is_pending()
                            && matches!(c.0.poll_ready(cx), Poll::Ready(Ok(()))),
                    )
                })
                .await;
                if ready {
                    break c;
                }
            }
            None => {
                let tcp = TcpStream::connect(upstream).await?;
                tcp.set_nodelay(true)?;
                break http1::handshake(TokioIo::new(tcp)).await?;
            }
        }
    };
    let mut ended = false;
    let mut sent = pin!(conn.0.send_request(req));
    let resp = poll_fn(|cx| {
        if !ended {
            ended = Pin::new(&mut conn.1).poll(cx).is_ready();
        }
        sent.as_mut().poll(cx)
    })
    .await?;
    Ok(resp.map(|body| PoolBody {
        body,
        conn: Some(conn),
        pool: pool.clone(),
        ended,
        finished: false,
    }))
}

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let listen: SocketAddr = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| ([127, 0, 0, 1], 28088).into());
    let upstream: SocketAddr = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| ([127, 0, 0, 1], 28080).into());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(listen).await?;
        let pool = Arc::new(Pool::default());
        loop {
            let (stream, _) = listener.accept().await?;
            stream.set_nodelay(true)?;
            let pool = pool.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let pool = pool.clone();
                    async move {
                        let resp = match send(&pool, upstream, req).await {
                            Ok(r) => r.map(Either::Left),
                            Err(_) => Response::builder()
                                .status(502)
                                .body(Either::Right(Empty::<Bytes>::new()))
                                .expect("502"),
                        };
                        Ok::<_, Infallible>(resp)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    })
}
