//! Device-view mount tests (being written).
mod common;

#[test]
fn device_view_serves_the_same_bytes() {
    let m = common::Mounted::with(&[], |s| {
        std::fs::write(s.join("f.bin"), vec![7u8; 100_000]).unwrap();
    });
    let got = std::fs::read(m.device().join("f.bin")).unwrap();
    assert_eq!(got, vec![7u8; 100_000]);
}
