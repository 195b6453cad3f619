//! The ring handoff between two real processes (this binary re-executes
//! itself as the peer, which maps the same memfd region):
//!
//! - descriptor round trip: one descriptor to the peer and one back, with
//!   the receivers spinning (`spin`) and with them sleeping on the eventfd
//!   after a short spin (the daemon's default of 20 µs), one in flight;
//! - tensor bytes/s: the sender fills a slot (a batch-sized tensor), the
//!   peer reads every byte of it and hands the slot back, 4 in flight.
//!
//! `cargo bench -p shm --bench ring`

use std::hint::black_box;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use shm::mailbox::Wiring;
use shm::{Descriptor, Kind, LayoutParams, ProcId, Region, SlotClass, SlotPool, Topology};

const PEER_ENV: &str = "SHM_BENCH_PEER";
const SLOT: usize = 4 << 20;

fn params() -> LayoutParams {
    LayoutParams::new(Topology { gpus: 1, preprocs: 1 }, 1, 64, &[SlotClass { size: SLOT, count: 8 }]).unwrap()
}

fn eventfd() -> OwnedFd {
    rustix::event::eventfd(0, rustix::event::EventfdFlags::NONBLOCK | rustix::event::EventfdFlags::CLOEXEC).unwrap()
}

fn recv(inbox: &mut shm::Inbox, spin: Duration) -> (ProcId, Descriptor) {
    loop {
        if let Some(x) = inbox.recv(Some(Duration::from_secs(5)), spin) {
            return x;
        }
    }
}

/// The peer: answers every descriptor; for tensors it first reads the slot.
/// A descriptor with `rows == u32::MAX` ends it.
fn peer(spec: &str) {
    let fds: Vec<i32> = spec.split(',').map(|s| s.parse().unwrap()).collect();
    let region = Arc::new(Region::attach(shm::fd::adopt(fds[0]).unwrap()).unwrap());
    let efds: Vec<Arc<OwnedFd>> = fds[1..].iter().map(|&f| Arc::new(shm::fd::adopt(f).unwrap())).collect();
    let me = ProcId(1);
    let wiring = Wiring::new(region.clone(), me, efds).unwrap();
    let pool = SlotPool::new(region);
    let mut inbox = wiring.inbox();
    let out = wiring.outbox(ProcId::FRONTEND).unwrap();
    // The peer spins as long as the parent says.
    let spin_us = std::env::var("SHM_BENCH_SPIN_US").ok().and_then(|v| v.parse().ok()).unwrap_or(20);
    loop {
        let (from, d) = recv(&mut inbox, Duration::from_micros(spin_us));
        if d.rows == u32::MAX {
            return;
        }
        let mut reply = d;
        if d.len > 0 {
            let slot = pool.adopt(from, me, &d).unwrap();
            // Read every byte, as a consumer gathering a batch would.
            let sum: u64 = slot.bytes(0, d.len as usize).unwrap().iter().map(|&b| u64::from(b)).sum();
            black_box(sum);
            reply.slot = slot.send_to(from);
        }
        while out.send(&reply).is_err() {
            std::hint::spin_loop();
        }
    }
}

struct Parent {
    child: std::process::Child,
    pool: SlotPool,
    inbox: shm::Inbox,
    out: shm::Outbox,
}

fn start(spin_us: u32) -> Parent {
    let region = Arc::new(Region::create("shm-bench", &params()).unwrap());
    let efds = [eventfd(), eventfd(), eventfd()];
    let mut numbers = vec![region.fd().unwrap().as_raw_fd()];
    shm::fd::set_inheritable(region.fd().unwrap(), true).unwrap();
    for e in &efds {
        shm::fd::set_inheritable(e.as_fd(), true).unwrap();
        numbers.push(e.as_raw_fd());
    }
    let spec: Vec<String> = numbers.iter().map(|n| n.to_string()).collect();
    let child = Command::new(std::env::current_exe().unwrap())
        .env(PEER_ENV, spec.join(","))
        .env("SHM_BENCH_SPIN_US", spin_us.to_string())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    shm::fd::set_inheritable(region.fd().unwrap(), false).unwrap();
    let efds: Vec<Arc<OwnedFd>> = efds.into_iter().map(Arc::new).collect();
    let wiring = Wiring::new(region.clone(), ProcId::FRONTEND, efds).unwrap();
    Parent { child, pool: SlotPool::new(region), inbox: wiring.inbox(), out: wiring.outbox(ProcId(1)).unwrap() }
}

impl Parent {
    fn stop(mut self) {
        let d = Descriptor { rows: u32::MAX, ..Default::default() };
        self.out.send(&d).unwrap();
        self.child.wait().unwrap();
    }
}

fn round_trips(spin_us: u32, n: u32) {
    let mut p = start(spin_us);
    let spin = Duration::from_micros(u64::from(spin_us));
    let mut samples = Vec::with_capacity(n as usize);
    for i in 0..n + 1000 {
        let d = Descriptor { request_id: u64::from(i), kind: Kind::Tensors as u8, ..Default::default() };
        let t = Instant::now();
        p.out.send(&d).unwrap();
        let _ = recv(&mut p.inbox, spin);
        if i >= 1000 {
            samples.push(t.elapsed());
        }
    }
    samples.sort();
    let pct = |q: f64| samples[((samples.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e6;
    println!(
        "descriptor round trip, receivers spin {spin_us:>6} µs: p50 {:6.2} µs, p99 {:7.2} µs ({n} round trips)",
        pct(0.5),
        pct(0.99)
    );
    p.stop();
}

fn tensors(len: usize, total_bytes: usize) {
    let mut p = start(20);
    let me = ProcId::FRONTEND;
    let n = total_bytes.div_ceil(len);
    let (mut sent, mut done) = (0usize, 0usize);
    let src: Vec<u8> = (0..len).map(|i| i as u8).collect();
    let t = Instant::now();
    while done < n {
        while sent < n && sent - done < 4 {
            let mut slot = p.pool.alloc(len, me, sent as u64).unwrap();
            slot.as_mut_slice()[..len].copy_from_slice(&src);
            let d = Descriptor {
                request_id: sent as u64,
                slot: slot.send_to(ProcId(1)),
                len: len as u32,
                kind: Kind::Tensors as u8,
                ..Default::default()
            };
            p.out.send(&d).unwrap();
            sent += 1;
        }
        let (from, d) = recv(&mut p.inbox, Duration::from_micros(20));
        drop(p.pool.adopt(from, me, &d).unwrap());
        done += 1;
    }
    let secs = t.elapsed().as_secs_f64();
    println!(
        "tensors of {:>5} KiB written, handed over, read and returned: {:6.2} GB/s, {:8.0} tensors/s",
        len >> 10,
        (n * len) as f64 / secs / 1e9,
        n as f64 / secs
    );
    p.stop();
}

fn main() {
    if let Ok(spec) = std::env::var(PEER_ENV) {
        return peer(&spec);
    }
    // `cargo bench` passes `--bench`; other arguments are ignored.
    println!("two processes sharing one memfd region");
    round_trips(1_000_000, 50_000);
    round_trips(20, 20_000);
    round_trips(0, 20_000);
    // A 3x224x224 FP32 image (588 KiB) and a batch of 4 of them.
    tensors(3 * 224 * 224 * 4, 2 << 30);
    tensors(4 * 3 * 224 * 224 * 4, 2 << 30);
}
