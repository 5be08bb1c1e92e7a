//! A flaky operation, retried: a server on loopback drops the first three
//! connections, and `fetch_greeting` (a `#[retryable]` function) keeps
//! trying until it gets an answer, printing each attempt and delay.
//!
//!     cargo run --example flaky
//!     cargo run --example flaky -- --drops 10   # more drops than attempts: gives up

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use recovery::{Classify, Context, Event, IssueRecord, Observer, retryable};
use recovery_suite::{count, say};

/// Prints events as they happen.
struct Printer;

impl Observer for Printer {
    fn on_event(&self, event: &Event) {
        say!("  {event}");
    }

    fn on_issue(&self, issue: &IssueRecord) {
        let json = serde_json::to_string(issue).unwrap_or_else(|e| e.to_string());
        say!("  gave up: {json}");
    }
}

#[retryable(max_attempts = 5, base = "100ms", multiplier = 2, max_delay = "1s",
            jitter = "equal", when = Classify::classify)]
fn fetch_greeting(addr: SocketAddr) -> std::io::Result<String> {
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line)?;
    if line.is_empty() {
        // The server hung up before saying anything: a transient failure.
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    Ok(line.trim_end().to_owned())
}

/// Serves one line per connection, after dropping the first `drops`.
fn serve(listener: TcpListener, drops: u32) {
    let seen = AtomicU32::new(0);
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else { continue };
        if seen.fetch_add(1, Ordering::SeqCst) < drops {
            drop(stream); // hang up at once
        } else {
            let _ = stream.write_all(b"hello from the loopback server\n");
        }
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut drops = 3;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--drops" => {
                let value = args
                    .next()
                    .ok_or("--drops needs a number, e.g. --drops 3")?;
                drops = value
                    .parse()
                    .map_err(|_| format!("--drops needs a whole number, not {value:?}"))?;
            }
            "-h" | "--help" => {
                say!(
                    "flaky: one retried call to a loopback server that drops connections\n\n\
                     usage: cargo run --example flaky -- [--drops N]\n\n\
                     --drops N   connections the server drops before it answers (default 3)"
                );
                return Ok(());
            }
            other => return Err(format!("unknown argument {other:?}; try --drops N").into()),
        }
    }

    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    std::thread::spawn(move || serve(listener, drops));

    let ctx = Context::builder().observer(Arc::new(Printer)).build();
    say!(
        "fetching from {addr}; the server drops the first {}",
        count(drops, "connection", "connections")
    );
    match ctx.in_scope(|| fetch_greeting(addr)) {
        Ok(greeting) => {
            say!("got: {greeting}");
            Ok(())
        }
        Err(e) => {
            say!("failed after every attempt: {e}");
            std::process::exit(1);
        }
    }
}
