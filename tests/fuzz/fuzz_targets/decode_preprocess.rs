//! Arbitrary bytes -> decode (any format the `image` crate knows) -> EXIF orientation -> RGB
//! -> ViT-B/32 preprocessing. Must never panic, abort or allocate without bound; every error
//! must be one line naming the input.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use vlm::images::{prepare_bytes, DecodeLimits, PreprocessConfig};

/// The real `openai/clip-vit-base-patch32` preprocessor config (legacy integer form).
static CONFIG: LazyLock<PreprocessConfig> = LazyLock::new(|| {
    PreprocessConfig::from_json_str(include_str!(
        "../../fixtures/configs/openai-legacy-preprocessor_config.json"
    ))
    .expect("the fixture config parses")
});

/// Small enough that every accepted image decodes in milliseconds; large enough for all the
/// seed images. The limit logic itself is the same at any value.
const LIMITS: DecodeLimits = DecodeLimits {
    max_pixels: 1 << 20,
};

fuzz_target!(|data: &[u8]| {
    match prepare_bytes(data, "fuzz-input", &LIMITS, &CONFIG) {
        Ok(pixels) => {
            assert_eq!(pixels.len(), 3 * 224 * 224);
            assert!(pixels.iter().all(|v| v.is_finite()));
        }
        Err(e) => {
            let msg = e.to_string();
            assert!(msg.starts_with("fuzz-input: "), "{msg}");
            assert!(!msg.contains('\n'), "{msg}");
        }
    }
});
