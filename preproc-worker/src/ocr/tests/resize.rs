//! cv2.resize INTER_LINEAR, pixel for pixel.

use super::{fixture, image, u8s, uint};
use crate::ocr::resize::resize;

#[test]
fn resize_matches_opencv_pixel_for_pixel() {
    // Upscaling, downscaling, exact halving (OpenCV's INTER_AREA shortcut),
    // one-pixel sides, mixed directions and the identity.
    for c in fixture(include_str!("fixtures/resize.json")).as_array().unwrap() {
        let src = image(c["kind"].as_str().unwrap(), uint(&c["sw"]), uint(&c["sh"]));
        let out = resize(&src, uint(&c["dw"]), uint(&c["dh"]));
        assert_eq!((out.width, out.height), (uint(&c["dw"]), uint(&c["dh"])));
        assert_eq!(out.data, u8s(&c["dst"]), "{}x{} -> {}x{}", c["sw"], c["sh"], c["dw"], c["dh"]);
    }
}
