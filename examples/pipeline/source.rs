//! The default source: a small demo repository with some history, made
//! with the real `git` (fixed names and dates, so its commits are the same
//! every time), served on loopback by `git daemon --inetd`, one process per
//! connection. No daemon outlives the pipeline: each server process ends
//! when its connection closes.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Runs git with a fixed identity and clock; fails with its stderr.
pub fn git(dir: &Path, args: &[&str]) -> Result<String, String> {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "Demo Author")
        .env("GIT_AUTHOR_EMAIL", "demo@example.invalid")
        .env("GIT_COMMITTER_NAME", "Demo Author")
        .env("GIT_COMMITTER_EMAIL", "demo@example.invalid")
        .env("GIT_AUTHOR_DATE", "2026-01-01T00:00:00Z")
        .env("GIT_COMMITTER_DATE", "2026-01-01T00:00:00Z")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("HOME", dir)
        .output()
        .map_err(|e| format!("cannot run git ({e}); install git"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(format!(
            "git {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

const HISTORY: &[(&str, &str, &str)] = &[
    (
        "README.md",
        "# demo\n\nA small repository for the recovery pipeline.\n",
        "Add a README",
    ),
    (
        "src/lib.rs",
        "pub fn add(a: u32, b: u32) -> u32 {\n    a + b\n}\n",
        "Add the library",
    ),
    (
        "src/main.rs",
        "fn main() {\n    println!(\"{}\", demo::add(2, 2));\n}\n",
        "Add a binary",
    ),
    (
        "docs/notes.txt",
        "first line\nsecond line\nthird line\n",
        "Write some notes",
    ),
    (
        "src/lib.rs",
        "/// Adds two numbers.\npub fn add(a: u32, b: u32) -> u32 {\n    a + b\n}\n",
        "Document add",
    ),
];

/// Creates `<dir>/demo.git` (bare) with a few commits, unless it exists.
/// Several pipelines may start on one run directory at once: each builds in
/// directories of its own and renames the result into place; the first
/// rename wins and the others use its repository (the same commits).
pub fn demo_repository(dir: &Path) -> Result<PathBuf, String> {
    let bare = dir.join("demo.git");
    if bare.join("HEAD").is_file() {
        return Ok(bare);
    }
    let pid = std::process::id();
    let work_name = format!("demo-work.{pid}");
    let work = dir.join(&work_name);
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).map_err(|e| format!("create {}: {e}", work.display()))?;
    git(&work, &["init", "--quiet", "--initial-branch=main"])?;
    for (path, content, message) in HISTORY {
        let file = work.join(path);
        if let Some(parent) = file.parent() {
            std::fs::create_dir_all(parent).map_err(|e| e.to_string())?;
        }
        std::fs::write(&file, content).map_err(|e| e.to_string())?;
        git(&work, &["add", path])?;
        git(&work, &["commit", "--quiet", "-m", message])?;
    }
    let tmp_name = format!("demo.git.tmp.{pid}");
    let tmp = dir.join(&tmp_name);
    let _ = std::fs::remove_dir_all(&tmp);
    git(dir, &["clone", "--quiet", "--bare", &work_name, &tmp_name])?;
    let renamed = std::fs::rename(&tmp, &bare);
    let _ = std::fs::remove_dir_all(&work);
    match renamed {
        Ok(()) => Ok(bare),
        // Another pipeline put its copy there first.
        Err(_) if bare.join("HEAD").is_file() => {
            let _ = std::fs::remove_dir_all(&tmp);
            Ok(bare)
        }
        Err(e) => Err(format!("rename onto {}: {e}", bare.display())),
    }
}

/// Serves the repositories under `base` over the git protocol on a loopback
/// port: each connection is handed to its own `git daemon --inetd`.
pub fn serve(base: &Path) -> Result<SocketAddr, String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let base = base.to_owned();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let _ = hand_to_git(stream, &base);
        }
    });
    Ok(addr)
}

fn hand_to_git(stream: TcpStream, base: &Path) -> std::io::Result<()> {
    let input: OwnedFd = stream.try_clone()?.into();
    let output: OwnedFd = stream.into();
    let mut child = Command::new("git")
        .arg("daemon")
        .arg("--inetd")
        .arg("--export-all")
        .arg(format!("--base-path={}", base.display()))
        .stdin(Stdio::from(input))
        .stdout(Stdio::from(output))
        .stderr(Stdio::null())
        .spawn()?;
    // Reap it in the background so no zombie is left.
    std::thread::spawn(move || child.wait());
    Ok(())
}
