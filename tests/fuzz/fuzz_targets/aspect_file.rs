//! Arbitrary bytes as an aspect file (`vlm tag --aspects my.toml`): `Aspect::parse` must never
//! panic, every error must be one line that starts with the file's name, and every aspect it
//! accepts must hold the invariants `vlm tag` relies on (labels present and distinct, a neutral
//! exactly for `multi`, prompts for every label, limits in range).
#![no_main]

use std::collections::HashSet;

use libfuzzer_sys::fuzz_target;
use vlm::tagging::aspects::{Aspect, AspectKind, MAX_LABEL_CHARS};

const SOURCE: &str = "fuzz.toml";

fuzz_target!(|data: &[u8]| {
    // `read_text_file` refuses non-UTF-8 before parsing; the lossy text still reaches the parser
    // with everything else a file can hold.
    let text = String::from_utf8_lossy(data);
    match Aspect::parse(&text, SOURCE) {
        Err(e) => {
            let msg = e.to_string();
            assert!(msg.starts_with(SOURCE), "{msg:?}");
            assert!(!msg.chars().any(char::is_control), "{msg:?}");
            if let Some(line) = e.line {
                // 1-based, and a line the file has (or the one after a final newline).
                assert!(line >= 1 && line <= text.split('\n').count(), "{line} in {msg:?}");
            }
        }
        Ok(aspect) => {
            assert_eq!(aspect.source, SOURCE);
            assert!(!aspect.name.is_empty());
            assert!(!aspect.description.is_empty());
            assert!(!aspect.description.chars().any(char::is_control));
            assert!(!aspect.labels.is_empty());
            assert_eq!(aspect.neutral.is_some(), aspect.kind == AspectKind::Multi);
            assert!(aspect.top_k.is_none_or(|k| k >= 1));
            assert!(aspect.threshold.is_none_or(|t| (0.0..=1.0).contains(&t)));
            let mut seen = HashSet::new();
            for label in aspect.labels.iter().chain(aspect.neutral.iter()) {
                assert!(!label.name.trim().is_empty(), "{label:?}");
                assert!(label.name.chars().count() <= MAX_LABEL_CHARS, "{label:?}");
                assert!(!label.name.chars().any(char::is_control), "{label:?}");
                assert!(seen.insert(label.name.to_lowercase()), "duplicate {label:?}");
                let prompts = aspect.prompts_for(label);
                assert!(!prompts.is_empty(), "{label:?}");
                assert!(prompts.iter().all(|p| !p.trim().is_empty()), "{prompts:?}");
            }
            let _ = aspect.templates_key();
        }
    }
});
