//! A loopback proxy in front of a test's own broker that can hold Kafka
//! Produce requests: writes stop being acknowledged while reads go on, as
//! when the leader of the partitions a client writes to is gone in a real
//! cluster — a fault one Tansu broker cannot produce. Start the broker with
//! [`crate::Broker::start_behind`] so that clients reach it only through
//! the proxy.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The proxy; it stops when dropped (its threads end with their sockets).
#[derive(Debug)]
pub struct ProduceStall {
    port: u16,
    upstream: Arc<AtomicU16>,
    holding: Arc<AtomicBool>,
    stopped: Arc<AtomicBool>,
}

/// The Kafka request header's API key of Produce.
const PRODUCE: i16 = 0;

impl ProduceStall {
    /// Listens on a free loopback port; connections are refused until
    /// [`ProduceStall::forward_to`] names the broker.
    pub fn bind() -> std::io::Result<ProduceStall> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let upstream = Arc::new(AtomicU16::new(0));
        let holding = Arc::new(AtomicBool::new(false));
        let stopped = Arc::new(AtomicBool::new(false));
        let (u, h, s) = (upstream.clone(), holding.clone(), stopped.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if s.load(Ordering::Acquire) {
                    break;
                }
                let Ok(client) = client else { continue };
                let port = u.load(Ordering::Acquire);
                let Ok(broker) = TcpStream::connect(("127.0.0.1", port)) else {
                    continue;
                };
                let h = h.clone();
                std::thread::spawn(move || pump(client, broker, &h));
            }
        });
        Ok(ProduceStall {
            port,
            upstream,
            holding,
            stopped,
        })
    }

    /// The port clients connect to.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:<port>`, the bootstrap to give clients.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Forwards new connections to the broker on `port`.
    pub fn forward_to(&self, port: u16) {
        self.upstream.store(port, Ordering::Release);
    }

    /// While `on`, a connection that sends a Produce request is held at
    /// that request (nothing after it is forwarded either); when released,
    /// the request goes on to the broker, late.
    pub fn hold(&self, on: bool) {
        self.holding.store(on, Ordering::Release);
    }
}

impl Drop for ProduceStall {
    fn drop(&mut self) {
        self.stopped.store(true, Ordering::Release);
        // A held request goes on, so no pump thread waits forever.
        self.holding.store(false, Ordering::Release);
        // Wake the accept loop so that it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// Client to broker request by request (4-byte size, then the request
/// whose first two bytes are the API key); broker to client as is.
fn pump(mut client: TcpStream, broker: TcpStream, holding: &AtomicBool) {
    let (Ok(mut from_broker), Ok(mut to_client)) = (broker.try_clone(), client.try_clone()) else {
        return;
    };
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut from_broker, &mut to_client);
        let _ = to_client.shutdown(Shutdown::Both);
    });
    let mut to_broker = broker;
    let mut size = [0u8; 4];
    while client.read_exact(&mut size).is_ok() {
        let len = usize::try_from(i32::from_be_bytes(size).max(0)).unwrap_or(0);
        let mut request = vec![0u8; len];
        if client.read_exact(&mut request).is_err() {
            break;
        }
        if request.len() >= 2 && i16::from_be_bytes([request[0], request[1]]) == PRODUCE {
            while holding.load(Ordering::Acquire) {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        if to_broker.write_all(&size).is_err() || to_broker.write_all(&request).is_err() {
            break;
        }
    }
    let _ = to_broker.shutdown(Shutdown::Both);
}
