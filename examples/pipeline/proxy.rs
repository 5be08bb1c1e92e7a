//! A flaky TCP proxy on loopback: it hangs up on the first `drops`
//! connections at once, then forwards bytes both ways.

use std::io;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

/// Starts the proxy in front of `upstream`; returns its address and a
/// counter of the connections it dropped.
pub fn start(upstream: SocketAddr, drops: u32) -> io::Result<(SocketAddr, Arc<AtomicU32>)> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let dropped = Arc::new(AtomicU32::new(0));
    let counter = Arc::clone(&dropped);
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            if counter.load(Ordering::SeqCst) < drops {
                counter.fetch_add(1, Ordering::SeqCst);
                let _ = client.shutdown(Shutdown::Both);
                continue;
            }
            std::thread::spawn(move || {
                let _ = forward(client, upstream);
            });
        }
    });
    Ok((addr, dropped))
}

fn forward(client: TcpStream, upstream: SocketAddr) -> io::Result<()> {
    let server = TcpStream::connect(upstream)?;
    let (mut c_read, mut s_write) = (client.try_clone()?, server.try_clone()?);
    let up = std::thread::spawn(move || {
        let _ = io::copy(&mut c_read, &mut s_write);
        let _ = s_write.shutdown(Shutdown::Write);
    });
    let (mut s_read, mut c_write) = (server, client);
    let _ = io::copy(&mut s_read, &mut c_write);
    let _ = c_write.shutdown(Shutdown::Write);
    let _ = up.join();
    Ok(())
}
