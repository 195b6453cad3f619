//! get_rotate_crop_image and the 180-degree turn.

use super::{f32s, fixture, image, quad, u8s, uint};
use crate::ocr::{Rgb, crop_image, rotate180};

#[test]
fn crops_match_opencv_pixel_for_pixel() {
    // Straight, tilted, tall (turned a quarter) and partly outside the image
    // (border pixels repeated), on a smooth and a busy image.
    for c in fixture(include_str!("fixtures/crop.json")).as_array().unwrap() {
        let src = image(c["kind"].as_str().unwrap(), uint(&c["w"]), uint(&c["h"]));
        let q = quad(&f32s(&c["quad"]));
        let out = crop_image(&src, &q);
        assert_eq!((out.width, out.height), (uint(&c["cw"]), uint(&c["ch"])), "{q:?}");
        assert_eq!(out.data, u8s(&c["rgb"]), "{} {q:?}", c["kind"]);
    }
}

#[test]
fn tall_crops_are_turned_counter_clockwise() {
    // A 2x4 crop (height/width 2) comes out 4x2, its right column on top.
    let src = Rgb { width: 2, height: 4, data: (0..24).collect() };
    let out = crop_image(&src, &[[0.0, 0.0], [2.0, 0.0], [2.0, 4.0], [0.0, 4.0]]);
    assert_eq!((out.width, out.height), (4, 2));
    let px = |img: &Rgb, x: usize, y: usize| img.data[(y * img.width as usize + x) * 3];
    // np.rot90: out[i][j] = in[j][w - 1 - i]
    for i in 0..2 {
        for j in 0..4 {
            assert_eq!(px(&out, j, i), px(&src, 1 - i, j));
        }
    }
}

#[test]
fn degenerate_quads_give_a_black_crop() {
    let src = image("smooth", 20, 20);
    let out = crop_image(&src, &[[1.0, 1.0], [9.0, 1.0], [17.0, 1.0], [5.0, 1.0]]);
    assert!(out.width >= 1 && out.height >= 1);
    assert!(out.data.iter().all(|&v| v == 0));
}

#[test]
fn rotate180_reverses_pixels_not_channels() {
    let mut img = Rgb { width: 2, height: 1, data: vec![1, 2, 3, 4, 5, 6] };
    rotate180(&mut img);
    assert_eq!(img.data, [4, 5, 6, 1, 2, 3]);
}
