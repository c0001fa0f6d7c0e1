//! The antialiased bilinear resize against PIL's (tests/data/pil_resize.json, made by
//! tests/data/pil_resize.py), which uses the same weights as PyTorch in double precision.

use rd_dataset::resize::resize_planes_bilinear_aa;

/// The input image of pil_resize.py.
fn input_value(y: usize, x: usize) -> f32 {
    (((x * 7 + y * 13 + (x * y) % 5) % 11) as f64 / 10.0) as f32
}

#[test]
fn matches_pil_bilinear_for_up_and_down_scaling() {
    let text = include_str!("../data/pil_resize.json");
    let json: serde_json::Value = serde_json::from_str(text).unwrap();
    let (h, w) = (
        json["height"].as_u64().unwrap() as usize,
        json["width"].as_u64().unwrap() as usize,
    );
    let src: Vec<f32> = (0..h)
        .flat_map(|y| (0..w).map(move |x| input_value(y, x)))
        .collect();
    let cases = json["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 6);
    for case in cases {
        let oh = case["height"].as_u64().unwrap() as usize;
        let ow = case["width"].as_u64().unwrap() as usize;
        let expect: Vec<f64> = case["values"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        let out = resize_planes_bilinear_aa(&src, 1, h, w, oh, ow);
        assert_eq!(out.len(), expect.len());
        let worst = out
            .iter()
            .zip(&expect)
            .map(|(a, b)| (f64::from(*a) - b).abs())
            .fold(0.0, f64::max);
        assert!(worst < 2e-6, "{h}x{w} -> {oh}x{ow}: max error {worst}");
    }
}
