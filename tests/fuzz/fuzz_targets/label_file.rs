//! Arbitrary bytes as a `--labels-file` (and as a `--labels` value and templates): parsing must
//! never panic, and every error must be one line naming its source.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vlm::text::{LabelList, Template};

fn one_line(msg: &str) {
    assert!(!msg.contains('\n') && !msg.contains('\r'), "{msg:?}");
}

fuzz_target!(|data: &[u8]| {
    // `read_text_file` refuses non-UTF-8; the lossy text still exercises the parser on
    // everything else a file can hold.
    let text = String::from_utf8_lossy(data);

    let mut labels = LabelList::default();
    match labels.add_text(&text, "labels.txt") {
        Ok(()) => {}
        Err(e) => {
            let msg = e.to_string();
            assert!(msg.starts_with("labels.txt"), "{msg:?}");
            one_line(&msg);
        }
    }
    let labels = labels.finish();

    let mut csv = LabelList::default();
    if let Err(e) = csv.add_csv(&text) {
        assert!(e.to_string().starts_with("--labels "), "{e}");
    }

    for line in text.lines() {
        if let Ok(t) = Template::new(line) {
            if let Ok(labels) = &labels {
                for l in labels {
                    let prompt = t.fill(l);
                    assert!(prompt.len() >= l.len());
                }
            }
        }
    }
});
