//! Starting the real `highserve` binary for end-to-end tests, and a minimal
//! HTTP/1.1 client (std only, so tests can also send malformed requests).
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A file from the fetched test data, with a clear message if it is missing.
pub fn testdata(name: &str) -> Vec<u8> {
    let p = root().join(".cache/testdata").join(name);
    std::fs::read(&p)
        .unwrap_or_else(|e| panic!("{}: {e}; run ./scripts/fetch --test (./scripts/test does)", p.display()))
}

/// A daemon on a free port with its own run directory; stopped on drop.
pub struct Daemon {
    pub child: Child,
    pub addr: String,
    pub dir: tempfile::TempDir,
    log: PathBuf,
}

/// The shipped config with `edit` applied, written to a file in `dir` (its
/// relative paths made absolute, since they are relative to the file).
pub fn config_with(dir: &Path, edit: impl Fn(String) -> String) -> PathBuf {
    let text = std::fs::read_to_string(root().join("configs/default.toml")).unwrap();
    let text = text
        .replace("\"../models\"", &format!("{:?}", root().join("models")))
        .replace("\"../.cache/", &format!("\"{}/.cache/", root().display()));
    let path = dir.join("config.toml");
    std::fs::write(&path, edit(text)).unwrap();
    path
}

impl Daemon {
    pub fn start(extra: &[&str]) -> Daemon {
        Daemon::start_with(&root().join("configs/default.toml"), extra, &[])
    }

    /// Starts with another config file, extra flags and environment.
    pub fn start_with(config: &Path, extra: &[&str], env: &[(&str, &str)]) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("daemon.log");
        let run_dir = dir.path().join("run");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_highserve"));
        cmd.envs(env.iter().copied());
        cmd.args(["serve", "--config"]).arg(config).args(["--port", "0"]);
        // Off (0) unless the test asks for it: see `free_port`.
        if !extra.contains(&"--grpc-port") {
            cmd.args(["--grpc-port", "0"]);
        }
        cmd.args(["--preproc-workers", "2", "--run-dir"])
            .arg(&run_dir)
            .args(extra)
            .env_remove("HIGHSERVE_PORT")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        let mut child = cmd.spawn().expect("the highserve binary starts");
        let deadline = Instant::now() + Duration::from_secs(120);
        let addr = loop {
            if let Ok(s) = std::fs::read_to_string(run_dir.join("ready")) {
                break s.trim().trim_start_matches("http://").to_string();
            }
            if let Some(status) = child.try_wait().unwrap() {
                panic!("highserve exited during start-up ({status}):\n{}", std::fs::read_to_string(&log).unwrap());
            }
            assert!(Instant::now() < deadline, "not ready in 120 s:\n{}", std::fs::read_to_string(&log).unwrap());
            std::thread::sleep(Duration::from_millis(50));
        };
        Daemon { child, addr, dir, log }
    }

    /// The gRPC listener's address (`host:port`), which the supervisor
    /// writes to `<run-dir>/grpc` before `ready`.
    pub fn grpc_addr(&self) -> String {
        let path = self.dir.path().join("run/grpc");
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e}; is gRPC on (--grpc-port)?\n{}", path.display(), self.log()));
        text.trim().to_string()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        signal(self.pid(), "TERM");
        wait_timeout(&mut self.child, Duration::from_secs(30)).unwrap_or_else(|| {
            let _ = self.child.kill();
            panic!("highserve did not exit within 30 s of SIGTERM:\n{}", self.log())
        })
    }

    /// The direct children of the supervisor.
    pub fn children(&self) -> Vec<i32> {
        children_of(self.pid())
    }

    pub fn get(&self, path: &str) -> Reply {
        request(&self.addr, "GET", path, &[], b"")
    }

    pub fn post(&self, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Reply {
        request(&self.addr, "POST", path, headers, body)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- highserve log ----\n{}\n-----------------------", self.log());
        }
        if self.child.try_wait().ok().flatten().is_none() {
            signal(self.pid(), "TERM");
            if wait_timeout(&mut self.child, Duration::from_secs(20)).is_none() {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
    }
}

/// A free TCP port for a listener whose port 0 means "off" (the daemon's
/// `--grpc-port`): probed by binding it, below the kernel's ephemeral range,
/// where other tests' port-0 listeners are never placed, and different per
/// process and call so that tests running side by side do not pick the same.
pub fn free_port() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let start = std::process::id().wrapping_mul(7919);
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = 20_000 + (start.wrapping_add(n) % 12_000) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

pub fn signal(pid: i32, sig: &str) {
    let ok = Command::new("kill").args([&format!("-{sig}"), &pid.to_string()]).status().map(|s| s.success());
    assert!(matches!(ok, Ok(true) | Ok(false)), "kill could not run");
}

pub fn wait_timeout(child: &mut Child, t: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + t;
    while Instant::now() < deadline {
        if let Some(s) = child.try_wait().unwrap() {
            return Some(s);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

pub fn children_of(pid: i32) -> Vec<i32> {
    let path = format!("/proc/{pid}/task/{pid}/children");
    std::fs::read_to_string(path).unwrap_or_default().split_whitespace().filter_map(|s| s.parse().ok()).collect()
}

pub fn alive(pid: i32) -> bool {
    // A zombie has exited; only its parent's wait is missing.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => !s.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z'),
        Err(_) => false,
    }
}

#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One HTTP/1.1 request on a fresh connection.
pub fn request(addr: &str, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Reply {
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("content-length")) {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).unwrap();
    // A server may answer (413) and close before reading a refused body.
    let _ = s.write_all(body);
    read_reply(&mut s)
}

pub fn read_reply(s: &mut TcpStream) -> Reply {
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP response head in {:?}", String::from_utf8_lossy(&raw)));
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.lines();
    let status = lines.next().and_then(|l| l.split_whitespace().nth(1)).and_then(|c| c.parse().ok()).unwrap();
    let headers =
        lines.filter_map(|l| l.split_once(':')).map(|(k, v)| (k.trim().to_string(), v.trim().to_string())).collect();
    Reply { status, headers, body: raw[split + 4..].to_vec() }
}

/// Looks for files the daemon might have left in /dev/shm.
pub fn dev_shm_entries() -> Vec<String> {
    std::fs::read_dir(Path::new("/dev/shm"))
        .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default()
}

/// A copy of the model repository (configs only; version directories are
/// links to the fetched files) whose `model` config is edited by `edit`, for
/// tests that need other batching settings.
pub fn repository_with(model: &str, edit: impl Fn(String) -> String) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(root().join("models")).unwrap().flatten() {
        let src = entry.path();
        if !src.join("config.toml").exists() {
            continue;
        }
        let dst = dir.path().join(entry.file_name());
        std::fs::create_dir_all(&dst).unwrap();
        let mut config = std::fs::read_to_string(src.join("config.toml")).unwrap();
        if entry.file_name() == model {
            config = edit(config);
        }
        std::fs::write(dst.join("config.toml"), config).unwrap();
        for v in std::fs::read_dir(&src).unwrap().flatten() {
            if v.path().is_dir() {
                std::os::unix::fs::symlink(v.path(), dst.join(v.file_name())).unwrap();
            }
        }
    }
    dir
}
