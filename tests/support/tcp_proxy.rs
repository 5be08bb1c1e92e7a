//! A flaky TCP proxy on loopback, between an S3 client and its server: per
//! connection, with a seeded generator, it forwards faithfully, drops the
//! connection partway through what the client sends (a request cut before
//! it is whole), drops it partway through what the server answers (a
//! request applied, its reply lost), or stalls it past the client's
//! time-out and then drops it.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the proxy did.
#[derive(Debug, Default)]
pub struct ProxyStats {
    pub connections: AtomicU64,
    /// Connections dropped while the client was sending.
    pub request_drops: AtomicU64,
    /// Connections dropped while the server was answering.
    pub reply_drops: AtomicU64,
    /// Connections stalled, then dropped.
    pub stalls: AtomicU64,
}

impl ProxyStats {
    /// Every connection the proxy cut.
    pub fn drops(&self) -> u64 {
        self.request_drops.load(Ordering::Relaxed)
            + self.reply_drops.load(Ordering::Relaxed)
            + self.stalls.load(Ordering::Relaxed)
    }
}

/// How often each fault happens, per mille of connections.
#[derive(Clone, Copy, Debug)]
pub struct Flakiness {
    pub request_drop: u32,
    pub reply_drop: u32,
    pub stall: u32,
    /// How long a stalled connection is held before it is dropped.
    pub stall_for: Duration,
}

/// A running proxy; stops accepting when dropped.
pub struct FlakyProxy {
    pub addr: SocketAddr,
    pub stats: Arc<ProxyStats>,
    flaky: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
}

#[derive(Clone, Copy)]
enum Plan {
    Pass,
    /// Cut after this many bytes from the client.
    DropRequest(u64),
    /// Cut after this many bytes from the server.
    DropReply(u64),
    /// Stop forwarding after this many bytes from the client.
    Stall(u64),
}

impl FlakyProxy {
    pub fn start(target: SocketAddr, seed: u64, flakiness: Flakiness) -> FlakyProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let stats = Arc::new(ProxyStats::default());
        let stop = Arc::new(AtomicBool::new(false));
        let flaky = Arc::new(AtomicBool::new(true));
        let rng = Arc::new(Mutex::new(seed | 1));
        {
            let (stats, stop, flaky) = (stats.clone(), stop.clone(), flaky.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let client = match listener.accept() {
                        Ok((client, _)) => client,
                        Err(_) => {
                            std::thread::sleep(Duration::from_millis(5));
                            continue;
                        }
                    };
                    stats.connections.fetch_add(1, Ordering::Relaxed);
                    let plan = if flaky.load(Ordering::Relaxed) {
                        choose(&rng, flakiness)
                    } else {
                        Plan::Pass
                    };
                    let stats = stats.clone();
                    std::thread::spawn(move || serve(client, target, plan, flakiness, &stats));
                }
            });
        }
        FlakyProxy {
            addr,
            stats,
            flaky,
            stop,
        }
    }

    /// From now on, new connections are forwarded faithfully.
    pub fn calm(&self) {
        self.flaky.store(false, Ordering::Relaxed);
    }
}

impl Drop for FlakyProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn choose(rng: &Mutex<u64>, f: Flakiness) -> Plan {
    let mut state = rng.lock().unwrap();
    let mut draw = || {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        *state
    };
    let roll = (draw() % 1000) as u32;
    // Cut somewhere in the first few requests of a kept-alive connection.
    let at = 50 + draw() % 4000;
    if roll < f.request_drop {
        Plan::DropRequest(at)
    } else if roll < f.request_drop + f.reply_drop {
        Plan::DropReply(at % 600 + 1)
    } else if roll < f.request_drop + f.reply_drop + f.stall {
        Plan::Stall(at)
    } else {
        Plan::Pass
    }
}

fn serve(client: TcpStream, target: SocketAddr, plan: Plan, f: Flakiness, stats: &ProxyStats) {
    let Ok(server) = TcpStream::connect(target) else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) else {
        return;
    };
    let up_limit = match plan {
        Plan::DropRequest(n) | Plan::Stall(n) => Some(n),
        _ => None,
    };
    let down_limit = match plan {
        Plan::DropReply(n) => Some(n),
        _ => None,
    };
    let down = std::thread::spawn(move || pump(s2, c2, down_limit, true));
    let stall = matches!(plan, Plan::Stall(_));
    let (Ok(c3), Ok(s3)) = (client.try_clone(), server.try_clone()) else {
        return;
    };
    let cut = pump(c3, s3, up_limit, !stall);
    match plan {
        Plan::Stall(_) if cut => {
            stats.stalls.fetch_add(1, Ordering::Relaxed);
            std::thread::sleep(f.stall_for);
        }
        Plan::DropRequest(_) if cut => {
            stats.request_drops.fetch_add(1, Ordering::Relaxed);
        }
        _ => {}
    }
    let _ = client.shutdown(Shutdown::Both);
    let _ = server.shutdown(Shutdown::Both);
    if down.join().unwrap_or(false) {
        stats.reply_drops.fetch_add(1, Ordering::Relaxed);
    }
}

/// Copies `from` to `to` until either closes, or until `limit` bytes have
/// passed (then both are shut if `shut`, or left hanging for a stall);
/// returns whether the limit cut it.
fn pump(mut from: TcpStream, mut to: TcpStream, limit: Option<u64>, shut: bool) -> bool {
    let mut buf = [0u8; 8192];
    let mut passed = 0u64;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => return false,
            Ok(n) => n,
        };
        let allowed = limit.map_or(n as u64, |l| (l - passed).min(n as u64)) as usize;
        if to.write_all(&buf[..allowed]).is_err() {
            return false;
        }
        passed += allowed as u64;
        if limit.is_some_and(|l| passed >= l) {
            if shut {
                let _ = from.shutdown(Shutdown::Both);
                let _ = to.shutdown(Shutdown::Both);
            }
            return true;
        }
    }
}
