//! Regions over real POSIX shared-memory objects, made and removed here.

use std::os::fd::OwnedFd;

use rustix::fs::Mode;
use rustix::shm::OFlags;

use super::Regions;
use crate::error::ApiError;
use crate::v2::ShmRef;

/// A shared-memory object of `len` bytes holding 0, 1, 2, …, removed on
/// drop (also used by the frontend's socket-free tests).
pub(crate) struct Object {
    pub key: String,
    fd: OwnedFd,
}

impl Object {
    pub fn new(tag: &str, len: usize) -> Object {
        let key = format!("/highserve-test-{}-{tag}", std::process::id());
        let fd = rustix::shm::open(key.as_str(), OFlags::CREATE | OFlags::EXCL | OFlags::RDWR, Mode::RUSR | Mode::WUSR)
            .expect("shm_open");
        let bytes: Vec<u8> = (0..len).map(|i| i as u8).collect();
        rustix::io::pwrite(&fd, &bytes, 0).expect("fill");
        Object { key, fd }
    }

    pub fn truncate(&self, len: u64) {
        rustix::fs::ftruncate(&self.fd, len).expect("ftruncate");
    }

    pub fn bytes(&self, at: u64, len: usize) -> Vec<u8> {
        let mut out = vec![0; len];
        assert_eq!(rustix::io::pread(&self.fd, &mut out, at).unwrap(), len);
        out
    }
}

impl Drop for Object {
    fn drop(&mut self) {
        let _ = rustix::shm::unlink(self.key.as_str());
    }
}

fn at(region: &str, offset: usize, byte_size: usize) -> ShmRef {
    ShmRef { region: region.into(), offset, byte_size }
}

#[track_caller]
/// Output `name` written as the request core does it: its region looked
/// up, then written.
fn write(regions: &Regions, at: &ShmRef, src: &[u8], name: &str) -> Result<(), ApiError> {
    regions.output(at, name)?.write(at, src, name)
}

fn expect_err<T: std::fmt::Debug>(r: Result<T, ApiError>, status: u16, parts: &[&str]) {
    let e = r.expect_err("expected an error");
    assert_eq!(e.status().as_u16(), status, "{}", e.message());
    for p in parts {
        assert!(e.message().contains(p), "`{}` lacks `{p}`", e.message());
    }
}

#[test]
fn off_unless_allowed() {
    let obj = Object::new("off", 64);
    expect_err(Regions::new(false).register("r", &obj.key, 0, 64), 403, &["--allow-client-shm"]);
}

#[test]
fn inputs_are_read_and_outputs_written_at_their_offsets() {
    let obj = Object::new("rw", 256);
    let regions = Regions::new(true);
    regions.register("r", &obj.key, 64, 128).unwrap();
    let mut dst = [0u8; 8];
    regions.read(&at("r", 16, 8), &mut dst, "x").unwrap();
    assert_eq!(dst, [80, 81, 82, 83, 84, 85, 86, 87]);
    write(&regions, &at("r", 100, 28), &[7; 20], "y").unwrap();
    assert_eq!(obj.bytes(164, 21), [[7u8; 20].as_slice(), &[184]].concat());
    let status = regions.status(None).unwrap();
    assert_eq!((status[0].name.as_str(), status[0].offset, status[0].byte_size), ("r", 64, 128));
    regions.unregister(Some("r"));
    assert!(regions.status(None).unwrap().is_empty());
}

#[test]
fn bad_registrations_say_what_was_wrong() {
    let obj = Object::new("bad", 64);
    let regions = Regions::new(true);
    expect_err(regions.register("r", "/dev/shm/x", 0, 8), 400, &["not a POSIX shared-memory name", "not a path"]);
    expect_err(regions.register("r", "../etc", 0, 8), 400, &["not a POSIX shared-memory name"]);
    expect_err(regions.register("r", "/highserve-test-none", 0, 8), 400, &["cannot be opened", "create it first"]);
    expect_err(regions.register("r", &obj.key, 60, 8), 400, &["offset 60 + byte_size 8 is past the end", "64 bytes"]);
    expect_err(regions.register("r", &obj.key, usize::MAX, 8), 400, &["past the end"]);
    expect_err(regions.register("r", &obj.key, 0, 0), 400, &["byte_size 0"]);
    regions.register("r", &obj.key, 0, 64).unwrap();
    expect_err(regions.register("r", &obj.key, 0, 8), 400, &["`r` is already registered"]);
    expect_err(regions.status(Some("s")), 404, &["no shared-memory region `s`", "registered: r"]);
    // Unregistering what is not there is no error, as in Triton.
    regions.unregister(Some("s"));
    regions.unregister(None);
    assert!(regions.status(None).unwrap().is_empty());
}

#[test]
fn tensors_must_lie_inside_their_region() {
    let obj = Object::new("bounds", 64);
    let regions = Regions::new(true);
    regions.register("r", &obj.key, 0, 32).unwrap();
    let mut dst = [0u8; 8];
    expect_err(regions.read(&at("r", 28, 8), &mut dst, "x"), 400, &["input `x`", "past the end of region `r`"]);
    expect_err(regions.read(&at("q", 0, 8), &mut dst, "x"), 400, &["input `x`", "no shared-memory region `q`"]);
    expect_err(
        regions.read(&at("r", 0, 4), &mut dst, "x"),
        400,
        &["input `x` is 8 bytes", "shared_memory_byte_size is 4"],
    );
    expect_err(write(&regions, &at("r", 0, 4), &[0; 8], "y"), 400, &["output `y` is 8 bytes", "at least"]);
}

#[test]
fn an_object_that_shrinks_fails_the_request_not_the_daemon() {
    let obj = Object::new("shrink", 64);
    let regions = Regions::new(true);
    regions.register("r", &obj.key, 0, 64).unwrap();
    obj.truncate(16);
    let mut dst = [0u8; 32];
    expect_err(regions.read(&at("r", 0, 32), &mut dst, "x"), 400, &["ends before byte", "shrank"]);
    expect_err(write(&regions, &at("r", 0, 32), &[1; 32], "y"), 400, &["shrank"]);
    // The write did not grow the object behind the client's back.
    assert_eq!(rustix::fs::fstat(&obj.fd).unwrap().st_size, 16);
}
