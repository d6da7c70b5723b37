//! Arbitrary bytes through the CLI's default decode path, `prepare_bytes_reduced`: JPEGs far
//! larger than the model input are decoded at 1/2, 1/4 or 1/8 scale by jpeg-decoder (DCT
//! scaling), everything else as in `decode_preprocess`. A tiny preprocessor config (resize to
//! 8, crop 8) makes the reduced path apply to JPEGs of 64 pixels and up, so that small fuzz
//! inputs reach it. libfuzzer-sys's panic hook aborts on any panic, including the ones
//! `images::decode_reduced` catches (they would still print to stderr).
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use vlm::images::{prepare_bytes_reduced, DecodeLimits, PreprocessConfig};

static CONFIG: LazyLock<PreprocessConfig> = LazyLock::new(|| {
    PreprocessConfig::from_json_str(r#"{"size": 8, "crop_size": 8}"#).expect("config parses")
});

const LIMITS: DecodeLimits = DecodeLimits {
    max_pixels: 1 << 20,
};

fuzz_target!(|data: &[u8]| {
    match prepare_bytes_reduced(data, "fuzz-input", &LIMITS, &CONFIG) {
        Ok(pixels) => {
            assert_eq!(pixels.len(), 3 * 8 * 8);
            assert!(pixels.iter().all(|v| v.is_finite()));
        }
        Err(e) => {
            let msg = e.to_string();
            assert!(msg.starts_with("fuzz-input: "), "{msg}");
            assert!(!msg.contains('\n'), "{msg}");
        }
    }
});
