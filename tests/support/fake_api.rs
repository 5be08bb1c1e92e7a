//! A fake HTTP API on loopback for the HTTP tests and the `api_client`
//! example: one thread, one connection at a time, HTTP/1.1 with
//! `Connection: close`; what it answers is scripted per path and per how
//! many times that path was asked.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// One answer.
#[derive(Clone, Debug)]
pub enum Reply {
    /// A response: status, headers, body.
    Respond(u16, Vec<(String, String)>, String),
    /// Read the request, then hang up without a word.
    Drop,
    /// Read the request, then say nothing until the client gives up.
    Stall,
}

impl Reply {
    /// A response with no extra headers.
    pub fn status(code: u16, body: &str) -> Reply {
        Reply::Respond(code, Vec::new(), body.to_owned())
    }

    /// A response with one header.
    pub fn with(code: u16, name: &str, value: &str) -> Reply {
        Reply::Respond(
            code,
            vec![(name.to_owned(), value.to_owned())],
            String::new(),
        )
    }
}

/// The script: the reply to the `n`th request (1-based) for `path`.
pub type Script = dyn Fn(&str, u32) -> Reply + Send + Sync;

/// A running fake API; stopped when dropped.
pub struct FakeApi {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    /// Each request's path, in order.
    pub requests: Arc<Mutex<Vec<String>>>,
}

impl FakeApi {
    /// Serves `script` on a free loopback port.
    pub fn start(
        script: impl Fn(&str, u32) -> Reply + Send + Sync + 'static,
    ) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (stop2, requests2) = (Arc::clone(&stop), Arc::clone(&requests));
        let script: Box<Script> = Box::new(script);
        let thread = std::thread::spawn(move || {
            let mut counts: HashMap<String, u32> = HashMap::new();
            for stream in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let Some(path) = read_request(&stream) else {
                    continue;
                };
                requests2
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(path.clone());
                let n = counts.entry(path.clone()).or_insert(0);
                *n += 1;
                answer(stream, script(&path, *n));
            }
        });
        Ok(FakeApi {
            addr,
            stop,
            thread: Some(thread),
            requests,
        })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The path of the request on `stream` (its head read to the blank line).
fn read_request(stream: &TcpStream) -> Option<String> {
    let mut reader = BufReader::new(stream);
    let mut first = String::new();
    reader.read_line(&mut first).ok()?;
    let path = first.split_whitespace().nth(1)?.to_owned();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).ok()? == 0 || line == "\r\n" || line == "\n" {
            break;
        }
    }
    Some(path)
}

fn answer(mut stream: TcpStream, reply: Reply) {
    match reply {
        Reply::Drop => drop(stream),
        Reply::Stall => std::thread::sleep(std::time::Duration::from_secs(3)),
        Reply::Respond(code, headers, body) => {
            let mut head = format!(
                "HTTP/1.1 {code} {}\r\ncontent-length: {}\r\nconnection: close\r\n",
                reason(code),
                body.len()
            );
            for (name, value) in headers {
                head.push_str(&format!("{name}: {value}\r\n"));
            }
            head.push_str("\r\n");
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(body.as_bytes());
        }
    }
}

fn reason(code: u16) -> &'static str {
    match code {
        200 => "OK",
        403 => "Forbidden",
        404 => "Not Found",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Whatever",
    }
}
