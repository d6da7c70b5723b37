//! SigLIP (v1)'s text canonicalisation, which transformers does in Python before SentencePiece
//! (`SiglipTokenizer.canonicalize_text`, big_vision's prompt canonicalisation).

use crate::model::{is_python_space, Normalizer};

/// The normaliser SigLIP (v1) checkpoints' tokenizers expect ([`canonicalize`]).
pub const CANONICAL: Normalizer = Normalizer {
    name: "SiglipCanonical",
    apply: canonicalize,
};

/// transformers' `SiglipTokenizer` text canonicalisation (`models/siglip/tokenization_siglip.py`:
/// `tokenize` then `canonicalize_text`), in order: U+2581 (SentencePiece's space) becomes a space;
/// `str.lower()` (full Unicode lowercasing, final sigma included: Rust's `to_lowercase` on the
/// whole string does the same); the 32 ASCII characters of Python's `string.punctuation` are
/// deleted (no other punctuation); every run of whitespace as Python's `\s` knows it becomes one
/// space; the ends are stripped.
pub fn canonicalize(text: &str) -> String {
    let lowered = text.replace('\u{2581}', " ").to_lowercase();
    // `is_ascii_punctuation` is exactly `string.punctuation`: !"#$%&'()*+,-./:;<=>?@[\]^_`{|}~
    let kept: String = lowered
        .chars()
        .filter(|c| !c.is_ascii_punctuation())
        .collect();
    kept.split(is_python_space)
        .filter(|w| !w.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonicalize_follows_python() {
        assert_eq!(
            canonicalize("  A PHOTO of 3 Coins, worth $1.50 (each)!  "),
            "a photo of 3 coins worth 150 each"
        );
        // Python's whitespace includes \x1c-\x1f; U+2581 is SentencePiece's space.
        assert_eq!(
            canonicalize("a\x1fb\u{3000}c\u{2581}d\u{85}e\u{a0}f"),
            "a b c d e f"
        );
        // Full lowercasing, final sigma included.
        assert_eq!(canonicalize("ΟΔΟΣ ΣΊΣΥΦΟΣ"), "οδος σίσυφος");
        // A zero-width space is not whitespace; only ASCII punctuation is removed.
        assert_eq!(canonicalize("a\u{200b}b"), "a\u{200b}b");
        assert_eq!(canonicalize("«¿Qué?» – “ok”"), "«¿qué» – “ok”");
        assert_eq!(canonicalize("!!!"), "");
        assert_eq!(canonicalize(""), "");
    }
}
