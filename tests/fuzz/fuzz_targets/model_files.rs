//! Arbitrary bytes as the files of a model folder that `vlm` reads before any weight:
//! `config.json`, `preprocessor_config.json` and the start of a `.safetensors` file. The first
//! byte chooses which (0, 1, 2, modulo 3); the rest is the file (for a `.safetensors` file, the
//! length of the file past the bytes given, then those bytes: a header can be accepted only
//! when the file's length is exactly what it says). Parsing must never panic, and
//! what is accepted must keep the promises the loader relies on: every size within the bounds
//! of `model::tower`, no product of them (positions, attention, pixel buffers, weight shapes)
//! overflowing, every tensor inside the file, disjoint from the others and exactly as long as
//! its shape and dtype say.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vlm::model::clip::config::ClipConfig;
use vlm::model::tower::{
    HfConfig, MAX_IMAGE_SIZE, MAX_LAYERS, MAX_PATCHES, MAX_TEXT_POSITIONS, MAX_VOCAB, MAX_WIDTH,
};
use vlm::model::weights::parse_header;
use vlm::images::PreprocessConfig;

fn config(text: &str) {
    let Ok(cfg) = ClipConfig::from_json(text) else {
        return;
    };
    let (t, v) = (&cfg.text, &cfg.vision);
    for (value, max) in [
        (t.hidden_size, MAX_WIDTH),
        (v.hidden_size, MAX_WIDTH),
        (cfg.projection_dim, MAX_WIDTH),
        (t.num_attention_heads, MAX_WIDTH),
        (v.num_attention_heads, MAX_WIDTH),
        (t.intermediate_size, 8 * MAX_WIDTH),
        (v.intermediate_size, 8 * MAX_WIDTH),
        (t.vocab_size, MAX_VOCAB),
        (t.max_position_embeddings, MAX_TEXT_POSITIONS),
        (v.image_size, MAX_IMAGE_SIZE),
        (v.patch_size, MAX_IMAGE_SIZE),
    ] {
        assert!(value >= 1 && value <= max, "{value} > {max}: {cfg:?}");
    }
    assert!(t.num_hidden_layers <= MAX_LAYERS && v.num_hidden_layers <= MAX_LAYERS);
    assert!(t.layer_norm_eps.is_finite() && t.layer_norm_eps > 0.0);
    assert!(v.layer_norm_eps.is_finite() && v.layer_norm_eps > 0.0);
    assert_eq!(t.hidden_size % t.num_attention_heads, 0);
    assert_eq!(v.hidden_size % v.num_attention_heads, 0);
    assert_eq!(v.num_channels, 3);
    let grid = cfg.vision.grid();
    assert!(grid >= 1 && grid * v.patch_size == v.image_size);
    let positions = grid * grid + 1;
    assert!(positions <= MAX_PATCHES + 1);
    // Every size computed from the config while building or running the towers, for a batch of
    // 256 inputs (the text chunk), fits in usize with room to spare (a u64 here: checked).
    let n = 256u64;
    let u = |x: usize| x as u64;
    let products = [
        // Pixels of a batch, and patches flattened for the patch matrix product.
        n * 3 * u(v.image_size) * u(v.image_size),
        u(v.hidden_size) * 3 * u(v.patch_size) * u(v.patch_size),
        // Weights: embeddings, fused q/k/v, MLPs, projections.
        u(t.vocab_size) * u(t.hidden_size),
        3 * u(v.hidden_size) * u(v.hidden_size),
        u(v.intermediate_size) * u(v.hidden_size),
        u(t.intermediate_size) * u(t.hidden_size),
        u(positions) * u(v.hidden_size),
        u(cfg.projection_dim) * u(v.hidden_size.max(t.hidden_size)),
        // Attention scores (batch x heads x tokens x tokens) and the causal mask.
        n * u(v.num_attention_heads) * u(positions) * u(positions),
        n * u(t.num_attention_heads) * u(t.max_position_embeddings).pow(2),
    ];
    for p in products {
        assert!(p < 1 << 48, "{p}: {cfg:?}");
    }
    // The pooling rule reads the token ids without panicking.
    let ids = vec![vec![49406, 320, 49407], vec![]];
    let _ = cfg.text_pooling().positions(&ids);
}

fn preprocessor(text: &str) {
    // With every family's image processor classes, as the loader reads it.
    let Ok(p) = PreprocessConfig::from_json_with(text, &vlm::model::processor_classes()) else {
        return;
    };
    assert!(p.validate().is_ok());
    if let Some((w, h)) = p.output_size() {
        assert!((1..=1 << 16).contains(&w) && (1..=1 << 16).contains(&h));
        // The loader's check that the crop is the vision tower's input: no truncation.
        let cfg = ClipConfig::from_json(r#"{"model_type":"clip"}"#).unwrap();
        let same = (w as usize, h as usize) == (cfg.vision.image_size, cfg.vision.image_size);
        assert_eq!(same, (w, h) == (224, 224));
    }
}

/// `input`: 8 bytes (little-endian) saying how many bytes the file has after the rest of the
/// input, then the start of the file.
fn safetensors(input: &[u8]) {
    let Some((missing, bytes)) = input.split_first_chunk::<8>() else {
        return;
    };
    let file_len = (bytes.len() as u64).saturating_add(u64::from_le_bytes(*missing));
    // As the start of a file of that length, and as a whole file.
    for file_len in [file_len, bytes.len() as u64] {
        let Ok(tensors) = parse_header(bytes, file_len) else {
            continue;
        };
        let header_end = 8 + u64::from_le_bytes(bytes[..8].try_into().unwrap());
        let mut ranges: Vec<_> = tensors.iter().map(|t| t.range.clone()).collect();
        ranges.sort_by_key(|r| (r.start, r.end));
        for t in &tensors {
            let elems = t
                .shape
                .iter()
                .try_fold(1u64, |n, &d| n.checked_mul(d as u64))
                .unwrap();
            assert_eq!(
                elems.checked_mul(t.dtype.size_in_bytes() as u64),
                Some(t.range.end - t.range.start),
                "{t:?}"
            );
            assert!(
                t.range.start >= header_end && t.range.end <= file_len,
                "{t:?}"
            );
        }
        // Back to back from the end of the header to the end of the file.
        let mut at = header_end;
        for r in &ranges {
            assert_eq!(r.start, at, "{ranges:?}");
            at = r.end;
        }
        assert_eq!(at, file_len);
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    match which % 3 {
        0 => config(&String::from_utf8_lossy(rest)),
        1 => preprocessor(&String::from_utf8_lossy(rest)),
        _ => safetensors(rest),
    }
});
