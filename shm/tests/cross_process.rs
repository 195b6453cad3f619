//! The ring, slots and wake-ups across real processes: this test binary
//! re-executes itself in a child role (the `child_role` entry below), so the
//! memory really is shared between two address spaces.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use shm::mailbox::Wiring;
use shm::{Descriptor, Kind, LayoutParams, ProcId, Region, SlotClass, SlotPool, Topology};

const CHILD_ENV: &str = "SHM_TEST_CHILD";
const N: u64 = 2000;

fn params() -> LayoutParams {
    LayoutParams::new(Topology { gpus: 1, preprocs: 1 }, 1, 16, &[SlotClass { size: 64 << 10, count: 8 }]).unwrap()
}

fn eventfd() -> OwnedFd {
    rustix::event::eventfd(0, rustix::event::EventfdFlags::NONBLOCK | rustix::event::EventfdFlags::CLOEXEC).unwrap()
}

/// `Inbox::recv` may return early on a stale wake-up; callers loop.
fn recv(inbox: &mut shm::Inbox) -> (ProcId, Descriptor) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(x) = inbox.recv(Some(Duration::from_secs(1)), Duration::from_micros(20)) {
            return x;
        }
        assert!(std::time::Instant::now() < deadline, "no message for 30 s: a lost wake-up or a dead peer");
    }
}

fn payload(i: u64) -> Vec<u8> {
    (0..1000 + (i % 3000)).map(|k| (k * 31 + i) as u8).collect()
}

/// Child role: echo every descriptor back with its slot bytes reversed.
/// In the normal test run (no environment variable) it has nothing to do.
#[test]
fn child_role() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let fds: Vec<i32> = spec.split(',').map(|s| s.parse().unwrap()).collect();
    let region = Arc::new(Region::attach(shm::fd::adopt(fds[0]).unwrap()).unwrap());
    let efds: Vec<Arc<OwnedFd>> = fds[1..].iter().map(|&f| Arc::new(shm::fd::adopt(f).unwrap())).collect();
    let me = ProcId(1);
    let wiring = Wiring::new(region.clone(), me, efds).unwrap();
    let pool = SlotPool::new(region);
    let mut inbox = wiring.inbox();
    let out = wiring.outbox(ProcId::FRONTEND).unwrap();
    let mut seen = 0;
    while seen < N {
        let (from, d) = recv(&mut inbox);
        let mut slot = pool.adopt(from, me, &d).unwrap();
        let range = d.offset as usize..(d.offset + d.len) as usize;
        slot.as_mut_slice()[range].reverse();
        let reply = Descriptor { slot: slot.send_to(from), kind: Kind::Outputs as u8, ..d };
        while out.send(&reply).is_err() {
            std::thread::yield_now();
        }
        seen += 1;
    }
}

fn spawn_child(region: &Region, efds: &[OwnedFd]) -> std::process::Child {
    let mut numbers = vec![region.fd().unwrap().as_raw_fd()];
    shm::fd::set_inheritable(region.fd().unwrap(), true).unwrap();
    for e in efds {
        shm::fd::set_inheritable(e.as_fd(), true).unwrap();
        numbers.push(e.as_raw_fd());
    }
    let spec: Vec<String> = numbers.iter().map(|n| n.to_string()).collect();
    let child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_role", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, spec.join(","))
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    shm::fd::set_inheritable(region.fd().unwrap(), false).unwrap();
    for e in efds {
        shm::fd::set_inheritable(e.as_fd(), false).unwrap();
    }
    child
}

#[test]
fn descriptors_and_slots_round_trip_through_another_process() {
    let region = Arc::new(Region::create("shm-test", &params()).unwrap());
    let efds = vec![eventfd(), eventfd(), eventfd()];
    let mut child = spawn_child(&region, &efds);
    let efds: Vec<Arc<OwnedFd>> = efds.into_iter().map(Arc::new).collect();
    let me = ProcId::FRONTEND;
    let wiring = Wiring::new(region.clone(), me, efds).unwrap();
    let pool = SlotPool::new(region.clone());
    let mut inbox = wiring.inbox();
    let out = wiring.outbox(ProcId(1)).unwrap();

    let (mut sent, mut done) = (0u64, 0u64);
    while done < N {
        // Keep up to 6 requests in flight (8 slots, some in transit back).
        while sent < N && sent - done < 6 {
            let data = payload(sent);
            let mut slot = pool.alloc(data.len(), me, sent).unwrap();
            slot.as_mut_slice()[..data.len()].copy_from_slice(&data);
            let d = Descriptor {
                request_id: sent,
                slot: slot.send_to(ProcId(1)),
                len: data.len() as u32,
                kind: Kind::Tensors as u8,
                ..Default::default()
            };
            out.send(&d).unwrap();
            sent += 1;
        }
        let (from, d) = recv(&mut inbox);
        assert_eq!(from, ProcId(1));
        let slot = pool.adopt(from, me, &d).unwrap();
        let mut want = payload(d.request_id);
        want.reverse();
        assert_eq!(slot.bytes(0, d.len as usize).unwrap(), &want[..], "request {}", d.request_id);
        done += 1;
    }
    assert!(child.wait().unwrap().success());
    assert!(pool.occupancy().iter().all(|&(_, used, _)| used == 0), "every slot came back");
}

#[test]
fn slots_of_a_killed_process_are_reclaimed() {
    let region = Arc::new(Region::create("shm-test-kill", &params()).unwrap());
    let efds = vec![eventfd(), eventfd(), eventfd()];
    // The child echoes; we send 5 and never read the replies, then kill it.
    let mut child = spawn_child(&region, &efds);
    let efds: Vec<Arc<OwnedFd>> = efds.into_iter().map(Arc::new).collect();
    let wiring = Wiring::new(region.clone(), ProcId::FRONTEND, efds).unwrap();
    let pool = SlotPool::new(region.clone());
    let out = wiring.outbox(ProcId(1)).unwrap();
    for i in 0..5u64 {
        let slot = pool.alloc(100, ProcId::FRONTEND, 100 + i).unwrap();
        let d = Descriptor { request_id: 100 + i, slot: slot.send_to(ProcId(1)), len: 100, ..Default::default() };
        out.send(&d).unwrap();
    }
    // Two more that the child will own and never see answered in time.
    child.kill().unwrap();
    child.wait().unwrap();
    // Whatever the child had not handed back is owned by it; after the
    // reclaim, every slot is either free or in our inbox's lane.
    let reclaimed = pool.reclaim(ProcId(1));
    let mut inbox = wiring.inbox();
    let mut returned = Vec::new();
    while let Some((_, d)) = inbox.try_recv() {
        returned.push(d.request_id);
        drop(pool.adopt(ProcId(1), ProcId::FRONTEND, &d).unwrap());
    }
    let mut all: Vec<u64> = reclaimed.iter().chain(&returned).copied().collect();
    all.sort_unstable();
    assert_eq!(all, (100..105).collect::<Vec<_>>(), "each request is either returned or reclaimed");
    assert!(pool.occupancy().iter().all(|&(_, used, _)| used == 0));
}
