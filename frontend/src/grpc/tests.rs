//! The adapter's pure parts; the service itself is driven end to end by
//! `tests/grpc.rs`.

use std::time::Duration;

use tonic::metadata::MetadataMap;

use super::infer::budget;

#[test]
fn grpc_timeout_becomes_the_requests_budget() {
    let with = |v: &str| {
        let mut m = MetadataMap::new();
        m.insert("grpc-timeout", v.parse().unwrap());
        budget(&m)
    };
    assert_eq!(with("250m"), Some(Duration::from_millis(250)));
    assert_eq!(with("2S"), Some(Duration::from_secs(2)));
    assert_eq!(with("1H"), Some(Duration::from_secs(3600)));
    assert_eq!(with("99999999u"), Some(Duration::from_micros(99_999_999)));
    for bad in ["", "m", "123456789m", "5x", "-1S"] {
        assert_eq!(with(bad), None, "{bad}");
    }
    assert_eq!(budget(&MetadataMap::new()), None);
}
