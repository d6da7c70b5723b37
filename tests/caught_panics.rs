//! A panic that `vlm::pool` catches (a decoder bug) costs its input one line on stderr, the
//! one the caller writes, and not the standard "thread ... panicked at" message as well; any
//! other panic is still reported as usual.
//!
//! No input is known to make a decoder panic (the fuzzers found none left), so the binary cannot
//! be driven into one. This test runs itself again as a child process that does what `vlm`'s
//! `main` does (`quiet_caught_panics`), runs the pipeline over items of which some panic, and
//! writes one line per failing item as `vlm` does; the parent reads the child's real stderr.

use std::process::Command;

use vlm::pool::{self, PoolOptions};

const CHILD: &str = "VLM_CAUGHT_PANICS_CHILD";
const ITEMS: usize = 40;

fn fails(x: usize) -> bool {
    x % 10 == 3 || x == 17
}

/// The child's work: the pipeline over `ITEMS` items, some of which panic (with a message, and
/// with an index out of bounds), one line on stderr per failure.
fn child(mode: &str) {
    if mode != "default-hook" {
        pool::quiet_caught_panics();
    }
    let items: Vec<usize> = (0..ITEMS).collect();
    let opts = PoolOptions {
        threads: 3,
        window: 4,
    };
    let table = [1u8, 2, 3];
    pool::ordered_map(
        &items,
        opts,
        |&x| {
            if x == 17 {
                // An index out of bounds, as a decoder bug would be.
                return usize::from(table[x % 7 + 2]);
            }
            if fails(x) {
                panic!("bad item {x}");
            }
            // A panic caught inside the work, as `jpeg::decode_reduced` does: no line at all.
            let inner = pool::catch(|| {
                if x % 10 == 5 {
                    panic!("inner {x}");
                }
                x
            });
            inner.unwrap_or(x)
        },
        |i, r| {
            if let Err(pool::Panicked(message)) = r {
                eprintln!("item {i}: internal error ({message})");
            }
            Ok(())
        },
    )
    .unwrap();
    if mode == "uncaught" {
        // A panic nobody catches is still reported by the previous hook.
        let _ = std::thread::spawn(|| panic!("not caught")).join();
    }
}

fn run_child(mode: &str) -> String {
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "caught_panics_cost_one_line_each",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD, mode)
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stderr).unwrap()
}

#[test]
fn caught_panics_cost_one_line_each() {
    if let Ok(mode) = std::env::var(CHILD) {
        child(&mode);
        return;
    }
    let failing: Vec<usize> = (0..ITEMS).filter(|&x| fails(x)).collect();

    let stderr = run_child("quiet");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), failing.len(), "{stderr}");
    for (line, x) in lines.iter().zip(&failing) {
        assert!(
            line.starts_with(&format!("item {x}: internal error (")),
            "{line}"
        );
        // The message says where the panic happened.
        assert!(line.contains(" at tests/caught_panics.rs:"), "{line}");
        if *x == 17 {
            assert!(line.contains("index out of bounds"), "{line}");
        } else {
            assert!(line.contains(&format!("bad item {x} at")), "{line}");
        }
    }

    // Without the hook (a library user's choice) the standard messages are there too: that is
    // what the hook removes.
    let stderr = run_child("default-hook");
    assert!(stderr.contains("panicked at"), "{stderr}");
    assert!(stderr.contains("inner 5"), "{stderr}");

    // With it, a panic outside `catch` still reaches the previous hook.
    let stderr = run_child("uncaught");
    assert_eq!(
        stderr.lines().filter(|l| l.contains("panicked at")).count(),
        1,
        "{stderr}"
    );
    assert!(stderr.contains("not caught"), "{stderr}");
}
