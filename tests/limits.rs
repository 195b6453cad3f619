//! Overload and time: admission limits answer 429 at once, deadlines drop
//! work before compute, a client that leaves cancels its request, and slow
//! clients are cut off.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;

const CLS: &str = "/v2/models/ppocr_cls/infer";

/// ppocr_cls waiting up to 3 s for a batch of 32: a lone request sits in the
/// batcher long enough to be cancelled or to time out there.
fn slow_batching_repo() -> tempfile::TempDir {
    repository_with("ppocr_cls", |c| {
        c.replace("max_queue_delay_microseconds = 500", "max_queue_delay_microseconds = 3000000")
            .replace("preferred_batch_size = [16, 32]", "preferred_batch_size = [32]")
    })
}

fn stat(d: &Daemon, key: &str) -> u64 {
    d.get("/v2/models/ppocr_cls/stats").json()["model_stats"][0][key].as_u64().unwrap()
}

#[test]
fn a_client_that_leaves_cancels_its_queued_request() {
    let repo = slow_batching_repo();
    let d = Daemon::start(&["--models", repo.path().to_str().unwrap()]);
    let img = testdata("text_0_0.jpg");
    let mut s = TcpStream::connect(&d.addr).unwrap();
    let head =
        format!("POST {CLS} HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\nContent-Length: {}\r\n\r\n", img.len());
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(&img).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    drop(s); // the client goes away while its request waits for a batch
    let deadline = Instant::now() + Duration::from_secs(10);
    while stat(&d, "cancel_count") == 0 {
        assert!(Instant::now() < deadline, "the request was not cancelled:\n{}", d.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(3000));
    assert_eq!(stat(&d, "inference_count"), 0, "the cancelled request was never computed");
    assert_eq!(d.post(CLS, &[("Content-Type", "image/jpeg")], &img).status, 200, "and the daemon serves on");
}

#[test]
fn a_request_past_its_deadline_is_dropped_before_compute() {
    let repo = slow_batching_repo();
    let d = Daemon::start(&["--models", repo.path().to_str().unwrap()]);
    // A v2 request with a 200 ms timeout, in a batcher that waits 3 s.
    let body = format!(
        r#"{{"parameters":{{"timeout":200000}},"inputs":[{{"name":"x","shape":[1,3,48,192],"datatype":"FP32","data":[{}]}}]}}"#,
        vec!["0.5"; 3 * 48 * 192].join(",")
    );
    let r = d.post(CLS, &[("Content-Type", "application/json")], body.as_bytes());
    assert_eq!(r.status, 504, "{}", r.text());
    assert!(r.json()["error"].as_str().unwrap().contains("timed out"), "{}", r.text());
    assert_eq!(stat(&d, "inference_count"), 0, "nothing was computed for it");
}

#[test]
fn beyond_the_admission_limit_the_answer_is_429_at_once() {
    let repo = slow_batching_repo();
    let dir = tempfile::tempdir().unwrap();
    let config = config_with(dir.path(), |c| c.replace("max_inflight = 256", "max_inflight = 2"));
    let d = Daemon::start_with(&config, &["--models", repo.path().to_str().unwrap()], &[]);
    let img = testdata("text_0_0.jpg");
    let statuses: Vec<(u16, Option<String>)> = std::thread::scope(|s| {
        let clients: Vec<_> = (0..8)
            .map(|_| {
                s.spawn(|| {
                    let r = d.post(CLS, &[("Content-Type", "image/jpeg")], &img);
                    (r.status, r.header("retry-after").map(str::to_string))
                })
            })
            .collect();
        clients.into_iter().map(|c| c.join().unwrap()).collect()
    });
    let refused: Vec<_> = statuses.iter().filter(|(s, _)| *s == 429).collect();
    assert_eq!(refused.len(), 6, "2 admitted, 6 refused: {statuses:?}");
    assert!(refused.iter().all(|(_, ra)| ra.as_deref() == Some("1")), "429s carry Retry-After: {statuses:?}");
    assert_eq!(statuses.iter().filter(|(s, _)| *s == 200).count(), 2);
}

#[test]
fn slow_clients_are_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_with(dir.path(), |c| {
        c.replace("header_timeout_ms = 30000", "header_timeout_ms = 1000")
            .replace("body_timeout_ms = 30000", "body_timeout_ms = 1000")
    });
    let d = Daemon::start_with(&config, &[], &[]);
    // A body that trickles in: 408 once the body timeout passes.
    let mut s = TcpStream::connect(&d.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(
        format!("POST {CLS} HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\nContent-Length: 1000\r\n\r\n")
            .as_bytes(),
    )
    .unwrap();
    for _ in 0..3 {
        let _ = s.write_all(b"\xff");
        std::thread::sleep(Duration::from_millis(500));
    }
    let r = read_reply(&mut s);
    assert_eq!(r.status, 408, "{}", r.text());
    assert!(r.text().contains("body_timeout_ms"), "{}", r.text());
    // Headers that trickle in: the connection is closed.
    let mut s = TcpStream::connect(&d.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let started = Instant::now();
    for b in b"GET /v2/he" {
        if s.write_all(&[*b]).is_err() {
            break;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    assert!(started.elapsed() < Duration::from_secs(20), "the server closed the slow connection");
    // And the daemon serves everyone else meanwhile.
    assert_eq!(d.get("/v2/health/ready").status, 200);
}
