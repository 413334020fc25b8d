//! TCP load for the data-path smoke benchmark (bench/datapath.sh): an echo
//! server and a tiny HTTP/1.1 server, and four loads against any address:
//! keep-alive request/response, bulk transfer, new connection per request,
//! keep-alive HTTP/1.1 GETs. Prints one line of results.

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Parser)]
struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Echo every byte back
    Echo {
        #[arg(long)]
        listen: String,
    },
    /// Keep-alive: 64-byte request, 64-byte response, on N connections
    Rr {
        #[arg(long)]
        addr: String,
        #[arg(long, default_value_t = 16)]
        connections: usize,
        #[arg(long, default_value_t = 5)]
        seconds: u64,
    },
    /// One connection, MB each way
    Bulk {
        #[arg(long)]
        addr: String,
        #[arg(long, default_value_t = 512)]
        megabytes: usize,
    },
    /// HTTP/1.1 server: 200 "ok" to every request, keep-alive
    HttpServe {
        #[arg(long)]
        listen: String,
    },
    /// Keep-alive HTTP/1.1 GETs on N connections
    Http {
        #[arg(long)]
        addr: String,
        #[arg(long, default_value_t = 16)]
        connections: usize,
        #[arg(long, default_value_t = 5)]
        seconds: u64,
    },
    /// N connections, each through after one 64-byte exchange, then held
    /// idle for `seconds`; prints when all are open
    Idle {
        #[arg(long)]
        addr: String,
        #[arg(long, default_value_t = 1000)]
        connections: usize,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
    /// A new connection per 64-byte exchange, N at a time
    Connect {
        #[arg(long)]
        addr: String,
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
        #[arg(long, default_value_t = 5)]
        seconds: u64,
    },
}

fn pct(v: &mut [Duration], q: f64) -> f64 {
    v.sort();
    v.get(((v.len() as f64 * q) as usize).min(v.len().saturating_sub(1)))
        .map(|d| d.as_secs_f64() * 1000.0)
        .unwrap_or(0.0)
}

/// Reads one HTTP/1.1 message head plus a content-length body from `s`,
/// keeping what follows in `buf`; false at EOF.
async fn read_message(s: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<bool> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                buf.drain(..end + 4 + len);
                return Ok(true);
            }
        }
        let mut chunk = [0u8; 4096];
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Ok(false);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// What one request/response on a kept-alive connection is.
#[derive(Clone, Copy)]
enum Exchange {
    /// 64 bytes out, the same 64 back (an echo server).
    Echo64,
    /// An HTTP/1.1 GET and its response.
    Http,
}

/// Request/response on `connections` kept-alive connections for `seconds`;
/// prints the rate and latency percentiles.
async fn keepalive(
    kind: Exchange,
    addr: String,
    connections: usize,
    seconds: u64,
) -> anyhow::Result<()> {
    let end = Instant::now() + Duration::from_secs(seconds);
    let addr = Arc::new(addr);
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let addr = addr.clone();
        tasks.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(addr.as_str()).await?;
            s.set_nodelay(true)?;
            let mut buf = Vec::new();
            let mut lat = Vec::new();
            while Instant::now() < end {
                let t = Instant::now();
                match kind {
                    Exchange::Echo64 => {
                        s.write_all(&[7u8; 64]).await?;
                        let mut resp = [0u8; 64];
                        s.read_exact(&mut resp).await?;
                    }
                    Exchange::Http => {
                        s.write_all(b"GET /bench HTTP/1.1\r\nhost: backend\r\n\r\n")
                            .await?;
                        if !read_message(&mut s, &mut buf).await? {
                            return Err(std::io::Error::other("connection closed"));
                        }
                    }
                }
                lat.push(t.elapsed());
            }
            Ok::<_, std::io::Error>(lat)
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await??);
    }
    let n = lat.len();
    println!(
        "rps={:.0} p50_ms={:.3} p99_ms={:.3}",
        n as f64 / seconds as f64,
        pct(&mut lat, 0.5),
        pct(&mut lat, 0.99)
    );
    Ok(())
}

/// Opens `connections` connections, 64 at a time, each proven through with
/// one echoed exchange; prints how many are open, holds them `seconds`.
async fn idle(addr: String, connections: usize, seconds: u64) -> anyhow::Result<()> {
    let t = Instant::now();
    let gate = Arc::new(tokio::sync::Semaphore::new(64));
    let addr = Arc::new(addr);
    let mut tasks = Vec::with_capacity(connections);
    for _ in 0..connections {
        let (addr, gate) = (addr.clone(), gate.clone());
        tasks.push(tokio::spawn(async move {
            let _slot = gate.acquire_owned().await.ok()?;
            let mut s = TcpStream::connect(addr.as_str()).await.ok()?;
            s.write_all(&[5u8; 64]).await.ok()?;
            let mut b = [0u8; 64];
            tokio::time::timeout(Duration::from_secs(30), s.read_exact(&mut b))
                .await
                .ok()?
                .ok()?;
            Some(s)
        }));
    }
    let mut open = Vec::with_capacity(connections);
    for task in tasks {
        if let Some(s) = task.await? {
            open.push(s);
        }
    }
    println!(
        "open={} failed={} took_s={:.1}",
        open.len(),
        connections - open.len(),
        t.elapsed().as_secs_f64()
    );
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    drop(open);
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Args::parse().cmd {
        Cmd::HttpServe { listen } => {
            let l = TcpListener::bind(&listen).await?;
            println!("listening on {}", l.local_addr()?);
            loop {
                let (mut s, _) = l.accept().await?;
                let _ = s.set_nodelay(true);
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    while let Ok(true) = read_message(&mut s, &mut buf).await {
                        let resp = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                        if s.write_all(resp).await.is_err() {
                            break;
                        }
                    }
                });
            }
        }
        Cmd::Http {
            addr,
            connections,
            seconds,
        } => keepalive(Exchange::Http, addr, connections, seconds).await?,
        Cmd::Echo { listen } => {
            let l = TcpListener::bind(&listen).await?;
            println!("listening on {}", l.local_addr()?);
            loop {
                let (mut s, _) = l.accept().await?;
                let _ = s.set_nodelay(true);
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        }
        Cmd::Rr {
            addr,
            connections,
            seconds,
        } => keepalive(Exchange::Echo64, addr, connections, seconds).await?,
        Cmd::Idle {
            addr,
            connections,
            seconds,
        } => idle(addr, connections, seconds).await?,
        Cmd::Bulk { addr, megabytes } => {
            let s = TcpStream::connect(&addr).await?;
            let (mut r, mut w) = s.into_split();
            let total = megabytes * 1024 * 1024;
            let t = Instant::now();
            let writer = tokio::spawn(async move {
                let chunk = vec![1u8; 64 * 1024];
                let mut sent = 0;
                while sent < total {
                    w.write_all(&chunk).await?;
                    sent += chunk.len();
                }
                w.shutdown().await?;
                Ok::<_, std::io::Error>(())
            });
            let mut buf = vec![0u8; 64 * 1024];
            let mut got = 0;
            while got < total {
                let n = r.read(&mut buf).await?;
                if n == 0 {
                    break;
                }
                got += n;
            }
            writer.await??;
            let secs = t.elapsed().as_secs_f64();
            println!("mb_s={:.0}", (got as f64 / 1048576.0) / secs);
        }
        Cmd::Connect {
            addr,
            concurrency,
            seconds,
        } => {
            let end = Instant::now() + Duration::from_secs(seconds);
            let addr = Arc::new(addr);
            let mut tasks = Vec::new();
            for _ in 0..concurrency {
                let addr = addr.clone();
                tasks.push(tokio::spawn(async move {
                    let mut n = 0u64;
                    let mut errors = 0u64;
                    while Instant::now() < end {
                        let r: std::io::Result<()> = async {
                            let mut s = TcpStream::connect(addr.as_str()).await?;
                            s.write_all(&[9u8; 64]).await?;
                            let mut b = [0u8; 64];
                            s.read_exact(&mut b).await?;
                            Ok(())
                        }
                        .await;
                        if r.is_ok() { n += 1 } else { errors += 1 }
                    }
                    (n, errors)
                }));
            }
            let (mut n, mut e) = (0, 0);
            for t in tasks {
                let (a, b) = t.await?;
                n += a;
                e += b;
            }
            println!("cps={:.0} errors={e}", n as f64 / seconds as f64);
        }
    }
    Ok(())
}
