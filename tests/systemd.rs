//! The systemd notify protocol against the real binary, with a real Unix
//! datagram socket standing in for systemd: READY=1 once serving, WATCHDOG=1
//! while every process makes progress (and not while the inference worker
//! is stopped), STOPPING=1 on SIGTERM.

mod common;

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use common::{Daemon, config_with, signal};

/// Messages that arrive within `window`.
fn collect(sock: &UnixDatagram, window: Duration) -> Vec<String> {
    let deadline = Instant::now() + window;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        sock.set_read_timeout(Some(left.max(Duration::from_millis(1)))).unwrap();
        match sock.recv(&mut buf) {
            Ok(n) => out.push(String::from_utf8_lossy(&buf[..n]).into_owned()),
            Err(_) => break,
        }
    }
    out
}

fn pings(msgs: &[String]) -> usize {
    msgs.iter().filter(|m| m.lines().any(|l| l == "WATCHDOG=1")).count()
}

#[test]
fn ready_watchdog_and_stopping_reach_the_notify_socket() {
    let dir = tempfile::tempdir().unwrap();
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    let config =
        config_with(dir.path(), |t| t.replace("[supervisor]\n", "[supervisor]\nheartbeat_timeout_ms = 1500\n"));
    let notify = sock_path.to_str().unwrap();
    // A 1 s watchdog: pings every 0.5 s while healthy.
    let mut d = Daemon::start_with(&config, &[], &[("NOTIFY_SOCKET", notify), ("WATCHDOG_USEC", "1000000")]);

    // READY=1 was sent before the ready file the test waited for.
    let first = collect(&sock, Duration::from_secs(2));
    let ready = first.iter().find(|m| m.lines().any(|l| l == "READY=1"));
    assert!(ready.is_some(), "no READY=1 among {first:?}\n{}", d.log());
    assert!(ready.unwrap().contains("STATUS=serving"), "{first:?}");
    assert!(pings(&first) >= 2, "a healthy daemon pings every half period: {first:?}");

    // A hung inference worker (stopped) stops the pings once its heartbeat
    // is older than heartbeat_timeout_ms.
    let gpu = d.children()[0];
    signal(gpu, "STOP");
    let _ = collect(&sock, Duration::from_millis(2500));
    let while_hung = collect(&sock, Duration::from_secs(2));
    signal(gpu, "CONT");
    assert_eq!(pings(&while_hung), 0, "pings went on while the inference worker was stopped: {while_hung:?}");
    assert!(d.log().contains("gpu0 has not made progress"), "{}", d.log());

    // It resumes: so do the pings, and the daemon still serves.
    let after = collect(&sock, Duration::from_secs(2));
    assert!(pings(&after) >= 1, "pings did not resume: {after:?}\n{}", d.log());
    let img = common::testdata("photo_640x480.jpg");
    assert_eq!(d.post("/v2/models/ppocr_cls/infer", &[("Content-Type", "image/jpeg")], &img).status, 200);

    let status = d.terminate();
    assert!(status.success(), "{status}");
    let last = collect(&sock, Duration::from_millis(200));
    assert!(last.iter().any(|m| m.lines().any(|l| l == "STOPPING=1")), "no STOPPING=1 among {last:?}");
}

#[test]
fn an_abstract_notify_socket_works_and_children_do_not_inherit_it() {
    let name = format!("highserve-test-{}", std::process::id());
    let addr =
        <std::os::unix::net::SocketAddr as std::os::linux::net::SocketAddrExt>::from_abstract_name(&name).unwrap();
    let sock = UnixDatagram::bind_addr(&addr).unwrap();
    let notify = format!("@{name}");
    let d = Daemon::start_with(&common::root().join("configs/default.toml"), &[], &[("NOTIFY_SOCKET", &notify)]);
    let msgs = collect(&sock, Duration::from_secs(2));
    assert!(msgs.iter().any(|m| m.contains("READY=1")), "{msgs:?}");
    assert_eq!(pings(&msgs), 0, "no WATCHDOG_USEC, no pings: {msgs:?}");
    for child in d.children() {
        let env = std::fs::read(format!("/proc/{child}/environ")).unwrap();
        let has = env.split(|&b| b == 0).any(|kv| kv.starts_with(b"NOTIFY_SOCKET="));
        assert!(!has, "child {child} inherited NOTIFY_SOCKET");
    }
}
