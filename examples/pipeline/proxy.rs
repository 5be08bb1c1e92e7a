//! A flaky TCP proxy on loopback: it hangs up on the first `drops`
//! connections as soon as the client has sent its request, then forwards
//! bytes both ways.

use std::io::{self, Read};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

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
                hang_up(client);
                continue;
            }
            std::thread::spawn(move || {
                let _ = forward(client, upstream);
            });
        }
    });
    Ok((addr, dropped))
}

/// Waits for the client's request, then closes. Hanging up before the
/// client has written races with its write: git then dies of SIGPIPE, or
/// sees a reset, or an EOF, and says something different each time. After
/// the request, git is reading, and always sees the same hang-up.
fn hang_up(mut client: TcpStream) {
    let _ = client.set_read_timeout(Some(Duration::from_secs(10)));
    let mut request = [0u8; 4096];
    let _ = client.read(&mut request);
    let _ = client.shutdown(Shutdown::Both);
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
