//! The worker pool: images decoded and preprocessed on worker threads while the caller encodes the
//! previous batch, in input order, with a panic in a decoder caught as that input's error.
//!
//! Workers take items in order and may run at most `window` items ahead of what the consumer has
//! taken, so memory stays flat however long the input list is, even when one huge image holds up the
//! line. Results reach the consumer in input order.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::sync::mpsc;
use std::sync::{Condvar, Mutex, Once};

use anyhow::Result;

/// How much parallelism a run uses.
#[derive(Debug, Clone, Copy)]
pub struct PoolOptions {
    /// Worker threads; 0 and 1 both mean "one worker".
    pub threads: usize,
    /// Items that may be prepared but not yet consumed.
    pub window: usize,
}

struct Ticket {
    /// Next item a worker will take.
    next: usize,
    /// Items the consumer has taken so far.
    consumed: usize,
    /// Set when the consumer stops early (an error, or stdout closed).
    stop: bool,
}

/// A work item that panicked: the panic's message. A decoder bug must cost one image, not the run
/// (and must not leave the consumer waiting forever for an item that never comes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Panicked(pub String);

thread_local! {
    /// Set while [`catch`] runs a closure on this thread.
    static CATCHING: Cell<bool> = const { Cell::new(false) };
    /// Where the panic [`catch`] is about to return happened, as the quiet hook saw it.
    static LOCATION: RefCell<Option<String>> = const { RefCell::new(None) };
}

static QUIET_HOOK: Once = Once::new();

/// Installs a panic hook that keeps quiet about the panics [`catch`] turns into errors: the
/// caller reports those itself, in one line per input, so the standard "thread panicked at"
/// message on stderr would only add lines. The hook records where the panic happened, for
/// [`catch`] to add to the message. Any other panic goes to the hook that was installed before
/// (by default, the standard message). `main` calls this once; a library user who does not
/// keeps their own hook untouched (the fuzz targets rely on that: libfuzzer's hook aborts on
/// every panic, caught or not).
pub fn quiet_caught_panics() {
    QUIET_HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if CATCHING.with(Cell::get) {
                let location = info
                    .location()
                    .map(|l| format!("{}:{}", short_source_path(l.file()), l.line()));
                LOCATION.with(|slot| *slot.borrow_mut() = location);
            } else {
                previous(info);
            }
        }));
    });
}

/// A dependency's source path from the cargo registry, from the crate's folder on
/// (`tiff-0.11.3/src/decoder/mod.rs`); any other path as it is.
fn short_source_path(file: &str) -> &str {
    match file.find("/registry/src/") {
        Some(i) => {
            let rest = &file[i + "/registry/src/".len()..];
            rest.split_once('/')
                .map_or(rest, |(_, crate_path)| crate_path)
        }
        None => file,
    }
}

/// Runs `f`, turning a panic into [`Panicked`] with the panic's message (and, once
/// [`quiet_caught_panics`] is installed, where it happened) instead of unwinding further.
pub fn catch<R>(f: impl FnOnce() -> R) -> Result<R, Panicked> {
    let outer = CATCHING.with(|c| c.replace(true));
    let result = std::panic::catch_unwind(AssertUnwindSafe(f));
    CATCHING.with(|c| c.set(outer));
    result.map_err(|payload| {
        let message = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        match LOCATION.with(RefCell::take) {
            Some(location) => Panicked(format!("{message} at {location}")),
            None => Panicked(message),
        }
    })
}

/// Calls `work` on every item on `opts.threads` threads and `consume(index, result)` on the calling
/// thread, in item order. Stops early, without waiting for the remaining items, when `consume`
/// returns an error, which is returned.
pub fn ordered_map<T, R, W, C>(
    items: &[T],
    opts: PoolOptions,
    work: W,
    mut consume: C,
) -> Result<()>
where
    T: Sync,
    R: Send,
    W: Fn(&T) -> R + Sync,
    C: FnMut(usize, Result<R, Panicked>) -> Result<()>,
{
    let window = opts.window.max(1);
    let threads = opts.threads.clamp(1, items.len().max(1));
    let ticket = Mutex::new(Ticket {
        next: 0,
        consumed: 0,
        stop: false,
    });
    let moved = Condvar::new();
    // The channel needs no bound of its own: the window bounds what can be in it.
    let (tx, rx) = mpsc::channel::<(usize, Result<R, Panicked>)>();
    std::thread::scope(|scope| {
        for _ in 0..threads {
            let tx = tx.clone();
            let (ticket, moved, work) = (&ticket, &moved, &work);
            scope.spawn(move || loop {
                let index = {
                    let Ok(mut t) = ticket.lock() else { return };
                    while !t.stop && t.next < items.len() && t.next >= t.consumed + window {
                        t = match moved.wait(t) {
                            Ok(t) => t,
                            Err(_) => return,
                        };
                    }
                    if t.stop || t.next >= items.len() {
                        return;
                    }
                    t.next += 1;
                    t.next - 1
                };
                let result = catch(|| work(&items[index]));
                if tx.send((index, result)).is_err() {
                    return;
                }
            });
        }
        drop(tx);
        let result = consume_in_order(items.len(), &rx, &ticket, &moved, &mut consume);
        if let Ok(mut t) = ticket.lock() {
            t.stop = true;
        }
        moved.notify_all();
        // Dropping the receiver makes a worker that is mid-item stop at its next send.
        drop(rx);
        result
    })
}

fn consume_in_order<R>(
    len: usize,
    rx: &mpsc::Receiver<(usize, R)>,
    ticket: &Mutex<Ticket>,
    moved: &Condvar,
    consume: &mut impl FnMut(usize, R) -> Result<()>,
) -> Result<()> {
    let mut pending: BTreeMap<usize, R> = BTreeMap::new();
    for expected in 0..len {
        let result = loop {
            if let Some(r) = pending.remove(&expected) {
                break r;
            }
            match rx.recv() {
                Ok((i, r)) if i == expected => break r,
                Ok((i, r)) => {
                    pending.insert(i, r);
                }
                Err(_) => anyhow::bail!("a worker thread stopped before item {expected}"),
            }
        };
        if let Ok(mut t) = ticket.lock() {
            t.consumed = expected + 1;
        }
        moved.notify_all();
        consume(expected, result)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[test]
    fn results_come_in_order_from_many_threads() {
        let items: Vec<u64> = (0..500).collect();
        let mut got = Vec::new();
        let opts = PoolOptions {
            threads: 4,
            window: 8,
        };
        ordered_map(
            &items,
            opts,
            |&x| {
                // Uneven work so that workers finish out of order.
                if x % 7 == 0 {
                    std::thread::sleep(Duration::from_millis(1));
                }
                x * x
            },
            |i, r| {
                assert_eq!(r, Ok((i as u64) * (i as u64)));
                got.push(i);
                Ok(())
            },
        )
        .unwrap();
        assert_eq!(got, (0..500).collect::<Vec<_>>());
    }

    #[test]
    fn workers_never_run_more_than_the_window_ahead() {
        let items: Vec<usize> = (0..200).collect();
        let started = AtomicUsize::new(0);
        let window = 5;
        let opts = PoolOptions { threads: 3, window };
        ordered_map(
            &items,
            opts,
            |&x| {
                started.fetch_add(1, Ordering::SeqCst);
                x
            },
            |i, _| {
                // A slow consumer: workers must wait for it rather than pile results up.
                std::thread::sleep(Duration::from_micros(200));
                let ahead = started.load(Ordering::SeqCst);
                assert!(ahead <= i + window + 1, "{ahead} started at item {i}");
                Ok(())
            },
        )
        .unwrap();
    }

    #[test]
    fn a_consumer_error_stops_the_run() {
        let items: Vec<usize> = (0..10_000).collect();
        let done = AtomicUsize::new(0);
        let opts = PoolOptions {
            threads: 2,
            window: 4,
        };
        let err = ordered_map(
            &items,
            opts,
            |&x| {
                done.fetch_add(1, Ordering::SeqCst);
                x
            },
            |i, _| {
                if i == 10 {
                    anyhow::bail!("stdout closed")
                }
                Ok(())
            },
        )
        .unwrap_err();
        assert_eq!(err.to_string(), "stdout closed");
        assert!(done.load(Ordering::SeqCst) < 100);
    }

    #[test]
    fn a_panicking_item_fails_alone() {
        let items: Vec<usize> = (0..50).collect();
        let mut failed = Vec::new();
        let opts = PoolOptions {
            threads: 2,
            window: 3,
        };
        ordered_map(
            &items,
            opts,
            |&x| {
                if x % 10 == 3 {
                    panic!("bad item {x}");
                }
                x
            },
            |i, r| {
                match r {
                    Ok(x) => assert_eq!(x, i),
                    Err(Panicked(m)) => failed.push((i, m)),
                }
                Ok(())
            },
        )
        .unwrap();
        assert_eq!(failed.len(), 5);
        assert_eq!(failed[0], (3, "bad item 3".to_string()));
    }

    #[test]
    fn empty_input_is_fine() {
        let items: Vec<u8> = Vec::new();
        let opts = PoolOptions {
            threads: 4,
            window: 4,
        };
        ordered_map(&items, opts, |&x| x, |_, _| unreachable!()).unwrap();
    }
}
