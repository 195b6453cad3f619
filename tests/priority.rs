//! Priority end to end against the real daemon, asserting on order and on
//! answers, never on time: live requests queued behind bulk ones are
//! answered first; a full daemon refuses the lowest level first; a request
//! that cannot meet its deadline is refused at once.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{Daemon, config_with, repository_with, testdata};

const CLS: &str = "/v2/models/ppocr_cls/infer";

/// A gauge or counter of the daemon's metrics (0 when absent).
fn metric(d: &Daemon, line_start: &str) -> f64 {
    let text = d.get("/metrics").text();
    text.lines().find_map(|l| l.strip_prefix(line_start)).and_then(|v| v.trim().parse().ok()).unwrap_or(0.0)
}

fn wait_for(what: &str, d: &Daemon, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(Instant::now() < deadline, "{what} did not happen:\n{}", d.log());
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn inflight_at(d: &Daemon, level: u8) -> f64 {
    metric(d, &format!("highserve_level_inflight_requests{{model=\"ppocr_cls\",version=\"1\",level=\"{level}\"}} "))
}

/// Posts `image` at `priority` on a thread; the thread returns the answer's
/// place in `order`.
fn post_in_thread(
    d: &Daemon,
    image: &Arc<Vec<u8>>,
    priority: u8,
    order: &Arc<AtomicUsize>,
) -> std::thread::JoinHandle<usize> {
    let (addr, image, order) = (d.addr.clone(), image.clone(), order.clone());
    std::thread::spawn(move || {
        let ctype = [("Content-Type", "image/jpeg")];
        let r = common::request(&addr, "POST", &format!("{CLS}?priority={priority}"), &ctype, &image);
        assert_eq!(r.status, 200, "{}", r.text());
        order.fetch_add(1, Ordering::SeqCst)
    })
}

#[test]
fn live_requests_queued_behind_bulk_ones_are_answered_first() {
    let d = Daemon::start(&["--load", "ppocr_cls"]);
    let image = Arc::new(testdata("photo_1280x720.jpg"));
    // Completion order: each answer takes the next number.
    let order = Arc::new(AtomicUsize::new(0));
    let bulk: Vec<_> = (0..96).map(|_| post_in_thread(&d, &image, 2, &order)).collect();
    // Live requests arrive once most of the bulk ones wait in the daemon.
    wait_for("64 bulk requests in flight", &d, || inflight_at(&d, 2) >= 64.0);
    let live: Vec<_> = (0..4).map(|_| post_in_thread(&d, &image, 1, &order)).collect();
    let last_live = live.into_iter().map(|t| t.join().unwrap()).max().unwrap();
    let bulk_done: Vec<usize> = bulk.into_iter().map(|t| t.join().unwrap()).collect();
    let after = bulk_done.iter().filter(|&&n| n > last_live).count();
    // First come, first served would answer the live requests after every
    // bulk one queued before them (at least 64 minus those finished while
    // they were sent); by level, they pass the queue.
    assert!(after >= 32, "only {after} of 96 bulk answers came after the last live one (number {last_live})");
}

/// A request whose headers declare a body it does not send yet: admitted
/// and holding its place until the body comes (or the connection closes).
fn held(d: &Daemon, priority: u8) -> TcpStream {
    let mut s = TcpStream::connect(&d.addr).unwrap();
    let head = format!(
        "POST {CLS}?priority={priority} HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\nContent-Length: 1000\r\n\r\n"
    );
    s.write_all(head.as_bytes()).unwrap();
    s
}

#[test]
fn a_full_daemon_refuses_the_lowest_level_first() {
    // Two levels, four places, a quarter kept from each level below: level
    // 1 may fill 4, level 2 three.
    let repo = repository_with("ppocr_cls", |c| format!("priority_levels = 2\ndefault_priority_level = 2\n{c}"));
    let dir = tempfile::tempdir().unwrap();
    let config = config_with(dir.path(), |c| {
        c.replace("max_inflight = 256", "max_inflight = 4")
            .replace("priority_headroom = 0.1", "priority_headroom = 0.25")
    });
    let models = repo.path().display().to_string();
    let d = Daemon::start_with(&config, &["--models", &models, "--load", "ppocr_cls"], &[]);
    let image = testdata("photo_640x480.jpg");
    let ctype = [("Content-Type", "image/jpeg")];
    let bulk: Vec<TcpStream> = (0..3).map(|_| held(&d, 2)).collect();
    wait_for("three bulk requests in flight", &d, || inflight_at(&d, 2) == 3.0);
    let r = d.post(&format!("{CLS}?priority=2"), &ctype, &image);
    assert_eq!(r.status, 429, "{}", r.text());
    assert!(r.text().contains("level 2 may fill 3 of the 4"), "{}", r.text());
    assert!(r.header("retry-after").is_some());
    // A live request still gets in, and is answered.
    let live = d.post(&format!("{CLS}?priority=1"), &ctype, &image);
    assert_eq!(live.status, 200, "{}", live.text());
    // Requests of no level wait at the model's default, level 2.
    let r = d.post(CLS, &ctype, &image);
    assert!(r.text().contains("level 2 may fill 3"), "{}", r.text());
    let shed = |level: u8, reason: &str| {
        metric(
            &d,
            &format!(
                "highserve_shed_total{{model=\"ppocr_cls\",version=\"1\",level=\"{level}\",reason=\"{reason}\"}} "
            ),
        )
    };
    assert_eq!(shed(2, "level_share"), 2.0);
    drop(bulk);
    wait_for("the held requests gone", &d, || inflight_at(&d, 2) == 0.0);
    assert_eq!(d.post(&format!("{CLS}?priority=2"), &ctype, &image).status, 200);
}

#[test]
fn a_request_that_cannot_meet_its_deadline_is_refused_at_once() {
    let d = Daemon::start(&["--load", "ppocr_cls"]);
    let image = testdata("photo_1280x720.jpg");
    let ctype = [("Content-Type", "image/jpeg")];
    // The daemon learns how long a request takes (several milliseconds:
    // decoding alone is about 2).
    for _ in 0..24 {
        assert_eq!(d.post(CLS, &ctype, &image).status, 200);
    }
    let r = d.post(&format!("{CLS}?timeout=200"), &ctype, &image);
    assert_eq!(r.status, 429, "{}", r.text());
    assert!(r.text().contains("would take about") && r.text().contains("deadline of 200µs"), "{}", r.text());
    assert!(r.header("retry-after").is_some());
    let r = d.post(&format!("{CLS}?timeout=0"), &ctype, &image);
    assert_eq!(r.status, 504, "{}", r.text());
    assert_eq!(d.post(&format!("{CLS}?timeout=10000000"), &ctype, &image).status, 200);
    let shed = |reason: &str| {
        metric(
            &d,
            &format!("highserve_shed_total{{model=\"ppocr_cls\",version=\"1\",level=\"255\",reason=\"{reason}\"}} "),
        )
    };
    assert_eq!((shed("deadline"), shed("expired")), (1.0, 1.0));
}
