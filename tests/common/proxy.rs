//! A TCP proxy the tests put between cartbus and a service to break the path on purpose.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A TCP proxy between cartbus and a service (the broker, its management API) that can
/// delay, reset and refuse.
pub struct Proxy {
    pub port: u16,
    pub delay_ms: AtomicU64,
    pub refuse: AtomicBool,
    resets: tokio::sync::watch::Sender<u64>,
}

impl Proxy {
    pub async fn start(upstream: std::net::SocketAddr) -> Arc<Proxy> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy");
        let port = listener.local_addr().expect("address").port();
        let proxy = Arc::new(Proxy {
            port,
            delay_ms: AtomicU64::new(0),
            refuse: AtomicBool::new(false),
            resets: tokio::sync::watch::Sender::new(0),
        });
        let accepting = proxy.clone();
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                if accepting.refuse.load(Ordering::Relaxed) {
                    let _ = socket2::SockRef::from(&inbound).set_linger(Some(Duration::ZERO));
                    continue;
                }
                tokio::spawn(accepting.clone().pipe(inbound, upstream));
            }
        });
        proxy
    }

    /// Resets every connection open now (RST, as a dropped network path would).
    pub fn reset(&self) {
        self.resets.send_modify(|n| *n += 1);
    }

    async fn pipe(self: Arc<Self>, inbound: tokio::net::TcpStream, upstream: std::net::SocketAddr) {
        let Ok(outbound) = tokio::net::TcpStream::connect(upstream).await else {
            return;
        };
        for stream in [&inbound, &outbound] {
            let _ = socket2::SockRef::from(stream).set_linger(Some(Duration::ZERO));
            let _ = stream.set_nodelay(true);
        }
        let mut reset = self.resets.subscribe();
        let (mut in_read, mut in_write) = inbound.into_split();
        let (mut out_read, mut out_write) = outbound.into_split();
        tokio::select! {
            _ = self.copy(&mut in_read, &mut out_write) => {}
            _ = self.copy(&mut out_read, &mut in_write) => {}
            _ = reset.changed() => {}
        }
    }

    async fn copy(
        &self,
        from: &mut tokio::net::tcp::OwnedReadHalf,
        to: &mut tokio::net::tcp::OwnedWriteHalf,
    ) {
        let mut buffer = vec![0u8; 64 * 1024];
        loop {
            let n = match from.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            let delay = self.delay_ms.load(Ordering::Relaxed);
            if delay > 0 {
                tokio::time::sleep(Duration::from_millis(delay)).await;
            }
            if to.write_all(&buffer[..n]).await.is_err() {
                return;
            }
        }
    }
}

impl Proxy {
    /// Unreachable: refuses new connections and resets the open ones.
    pub fn cut(&self) {
        self.refuse.store(true, Ordering::Relaxed);
        self.reset();
    }

    pub fn mend(&self) {
        self.refuse.store(false, Ordering::Relaxed);
    }
}
