//! A fault-injecting TCP proxy in front of the real ClickHouse server.
//!
//! It passes bytes through, except for the faults it is told to inject: at a
//! new connection ([`Fault::Refuse`]), or at a request carrying a refresh
//! query (recognised by one of [`MARKERS`], which only the full and the
//! incremental exposures queries contain; the column-type lookup, the mutations
//! check and the change count pass through). It counts the connections it
//! accepted and the refresh queries it saw.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Texts only the refresh queries send: the full one, and the incremental one.
pub const MARKERS: [&[u8]; 2] = [b"sipHash128", b"changed_hits"];
/// Bytes of a request kept between reads, so a marker split across two is seen.
const TAIL: usize = 16;

/// What the proxy does instead of passing through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Reset a new connection before reading anything.
    Refuse,
    /// Read the refresh request, then reset the connection without answering.
    ResetAfterRequest,
    /// Forward the request, then only this many bytes of the answer, then close.
    CutAnswer(usize),
    /// Answer `200 OK` with a body that is not RowBinary.
    Garbage,
    /// Answer with this HTTP status and a proxy's HTML page, as a load balancer would.
    Status(u16),
    /// Accept the request and never answer.
    Silent,
}

struct Plan {
    fault: Option<Fault>,
    /// How many more times to inject it (`usize::MAX`: always).
    times: usize,
}

struct State {
    upstream: SocketAddr,
    plan: Mutex<Plan>,
    connections: AtomicUsize,
    queries: AtomicUsize,
}

impl State {
    /// The fault to inject now, if `fault` is the planned one and is still due.
    fn take(&self, refuse: bool) -> Option<Fault> {
        let mut plan = self.plan.lock().unwrap();
        let fault = plan.fault?;
        if (fault == Fault::Refuse) != refuse || plan.times == 0 {
            return None;
        }
        if plan.times != usize::MAX {
            plan.times -= 1;
        }
        Some(fault)
    }
}

/// A running proxy; it stops with the test's runtime.
#[derive(Clone)]
pub struct Proxy {
    /// `http://127.0.0.1:<port>`, for `CLICKHOUSE_URL`.
    pub url: String,
    state: Arc<State>,
}

impl Proxy {
    /// Starts a pass-through proxy to the ClickHouse server at `upstream_url`.
    pub async fn start(upstream_url: &str) -> Self {
        let upstream: SocketAddr = upstream_url
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .parse()
            .expect("upstream host:port");
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(State {
            upstream,
            plan: Mutex::new(Plan {
                fault: None,
                times: 0,
            }),
            connections: AtomicUsize::new(0),
            queries: AtomicUsize::new(0),
        });
        let shared = Arc::clone(&state);
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(serve(client, Arc::clone(&shared)));
            }
        });
        Self { url, state }
    }

    /// Injects `fault` the next `times` times it applies (`usize::MAX`: always),
    /// and resets the counters.
    pub fn inject(&self, fault: Fault, times: usize) {
        *self.state.plan.lock().unwrap() = Plan {
            fault: Some(fault),
            times,
        };
        self.state.connections.store(0, Ordering::SeqCst);
        self.state.queries.store(0, Ordering::SeqCst);
    }

    /// Connections accepted since the last [`Proxy::inject`].
    pub fn connections(&self) -> usize {
        self.state.connections.load(Ordering::SeqCst)
    }

    /// Refresh queries seen since the last [`Proxy::inject`] (the attempts).
    pub fn queries(&self) -> usize {
        self.state.queries.load(Ordering::SeqCst)
    }
}

/// Closes with a TCP reset rather than an orderly shutdown.
fn reset(stream: TcpStream) {
    let _ = stream.set_zero_linger();
    drop(stream);
}

async fn serve(mut client: TcpStream, state: Arc<State>) {
    state.connections.fetch_add(1, Ordering::SeqCst);
    if state.take(true).is_some() {
        return reset(client);
    }
    let Ok(mut upstream) = TcpStream::connect(state.upstream).await else {
        return reset(client);
    };
    let mut request_tail: Vec<u8> = Vec::new();
    let mut cut: Option<usize> = None;
    let (mut from_client, mut from_upstream) = (vec![0u8; 65536], vec![0u8; 65536]);
    loop {
        tokio::select! {
            read = client.read(&mut from_client) => {
                let n = match read { Ok(0) | Err(_) => return, Ok(n) => n };
                let chunk = &from_client[..n];
                request_tail.extend_from_slice(chunk);
                if MARKERS
                    .iter()
                    .any(|m| request_tail.windows(m.len()).any(|w| w == *m))
                {
                    request_tail.clear();
                    state.queries.fetch_add(1, Ordering::SeqCst);
                    match state.take(false) {
                        None => {}
                        Some(Fault::Refuse) => unreachable!("taken at accept"),
                        Some(Fault::ResetAfterRequest) => return reset(client),
                        Some(Fault::CutAnswer(bytes)) => cut = Some(bytes),
                        Some(Fault::Garbage) => {
                            let body = b"<html><body>This is not RowBinary.</body></html>\n";
                            let head = format!(
                                "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n\
                                 Content-Length: {}\r\nConnection: close\r\n\r\n",
                                body.len()
                            );
                            let _ = client.write_all(head.as_bytes()).await;
                            let _ = client.write_all(body).await;
                            return;
                        }
                        Some(Fault::Status(code)) => {
                            let body = format!(
                                "<html><head><title>{code} Service Temporarily Unavailable</title></head></html>\n"
                            );
                            let head = format!(
                                "HTTP/1.1 {code} Service Unavailable\r\nContent-Type: text/html\r\n\
                                 Content-Length: {}\r\nConnection: close\r\n\r\n",
                                body.len()
                            );
                            let _ = client.write_all(head.as_bytes()).await;
                            let _ = client.write_all(body.as_bytes()).await;
                            return;
                        }
                        Some(Fault::Silent) => {
                            // Hold both sockets open, answering nothing, until the test ends.
                            std::future::pending::<()>().await;
                        }
                    }
                } else {
                    let keep = request_tail.len().saturating_sub(TAIL);
                    request_tail.drain(..keep);
                }
                if upstream.write_all(chunk).await.is_err() {
                    return;
                }
            }
            read = upstream.read(&mut from_upstream) => {
                let n = match read { Ok(0) | Err(_) => return, Ok(n) => n };
                let forward = match cut.as_mut() {
                    None => n,
                    Some(left) => {
                        let take = n.min(*left);
                        *left -= take;
                        take
                    }
                };
                if client.write_all(&from_upstream[..forward]).await.is_err() {
                    return;
                }
                if cut == Some(0) {
                    return; // the answer is cut short: close mid-body
                }
            }
        }
    }
}
