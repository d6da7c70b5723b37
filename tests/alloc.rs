//! `vlm::alloc`: tensors that use a mapped weight file in place. This test binary installs the
//! allocator and enables in-place weights, as `vlm`'s `main.rs` does, and checks the values,
//! growth, that the mapping goes away with its last user, and that all of it holds up with many
//! threads allocating, growing and freeing at once.
#![cfg(target_os = "linux")]

use std::io::Write;
use std::sync::{Arc, Barrier};

use vlm::alloc::{enable_in_place, mapping_available, Allocator, Mapping};

#[global_allocator]
static ALLOC: Allocator = Allocator;

fn enable() {
    // SAFETY: `ALLOC`, an `Allocator`, is this test binary's global allocator.
    unsafe { enable_in_place() };
    assert!(mapping_available());
}

/// Lines of /proc/self/maps that map `path`.
fn mapped(path: &std::path::Path) -> usize {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    let name = path.display().to_string();
    maps.lines().filter(|l| l.ends_with(&name)).count()
}

fn file_of(values: &[f32], lead: usize) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(&vec![0xAB; lead]).unwrap();
    for v in values {
        f.write_all(&v.to_le_bytes()).unwrap();
    }
    f.flush().unwrap();
    f
}

#[test]
fn mapped_vectors_read_the_file_grow_onto_the_heap_and_unmap_when_done() {
    enable();
    let values: Vec<f32> = (0..10_000).map(|i| i as f32 * 0.5 - 7.0).collect();
    let f = file_of(&values, 8);
    let file = std::fs::File::open(f.path()).unwrap();
    let map = Mapping::new(&file).unwrap();
    assert_eq!(mapped(f.path()), 1);

    // SAFETY (all f32s calls): the ranges of the Vecs alive at once do not overlap.
    let a = unsafe { map.f32s(8, 100) }.unwrap();
    let mut b = unsafe { map.f32s(8 + 4 * 100, 50) }.unwrap();
    assert_eq!(a, values[..100]);
    assert_eq!(b, values[100..150]);
    // Out of the file, misaligned, empty: refused (the loader then reads instead).
    assert!(unsafe { map.f32s(8, 10_001) }.is_none());
    assert!(unsafe { map.f32s(9, 10) }.is_none());
    assert!(unsafe { map.f32s(8, 0) }.is_none());

    // Growing moves the values to the heap; writing never reaches the file (private mapping).
    b.push(1e9);
    b[0] = -1.0;
    assert_eq!(b.len(), 51);
    assert_eq!(b[1..50], values[101..150]);
    assert_eq!(b[50], 1e9);
    let mut c = unsafe { map.f32s(8 + 4 * 200, 10) }.unwrap();
    c[3] = 42.0;
    assert_eq!(c[3], 42.0);
    let on_disk = std::fs::read(f.path()).unwrap();
    assert_eq!(
        &on_disk[8 + 4 * 203..8 + 4 * 204],
        &values[203].to_le_bytes()
    );

    // The mapping lives until the Mapping and every Vec from it are gone.
    drop(map);
    assert_eq!(mapped(f.path()), 1);
    drop(a);
    drop(c);
    assert_eq!(
        mapped(f.path()),
        0,
        "still mapped after the last Vec was freed"
    );
    drop(b);
}

#[test]
fn many_mappings_come_and_go() {
    enable();
    let values: Vec<f32> = (0..1024).map(|i| i as f32).collect();
    let f = file_of(&values, 0);
    for _ in 0..500 {
        let file = std::fs::File::open(f.path()).unwrap();
        let map = Mapping::new(&file).unwrap();
        // SAFETY: the only Vec of this mapping.
        let v = unsafe { map.f32s(0, 1024) }.unwrap();
        drop(map);
        assert_eq!(v[1023], 1023.0);
    }
    assert_eq!(mapped(f.path()), 0);
}

/// A small deterministic generator (xorshift64*), one per thread.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> usize {
        (self.next() % n) as usize
    }
}

/// Many threads at once: each maps the file afresh every round while one mapping is shared by all,
/// takes disjoint mapped `Vec`s from both, reads them, writes, grows, shrinks and clones them,
/// sends some to another thread to be freed there, and all the while allocates, grows and frees
/// ordinary `Vec`s of many sizes. Every value is checked, and at the end no mapping is left.
#[test]
fn many_threads_allocate_grow_and_free_mapped_and_heap_vectors_at_once() {
    enable();
    const THREADS: usize = 8;
    const ROUNDS: usize = 300;
    const CHUNK: usize = 1024; // f32 values per mapped Vec
    const CHUNKS: usize = 64;
    let values: Vec<f32> = (0..CHUNK * CHUNKS).map(|i| i as f32 + 0.25).collect();
    let f = file_of(&values, 0);
    let path = f.path().to_path_buf();
    let values = Arc::new(values);
    let shared_file = std::fs::File::open(&path).unwrap();
    let shared = Arc::new(Mapping::new(&shared_file).unwrap());
    let start = Arc::new(Barrier::new(THREADS));
    let (to_free, freed_elsewhere) = std::sync::mpsc::channel::<Vec<f32>>();
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let (path, values, shared, start, to_free) = (
                path.clone(),
                Arc::clone(&values),
                Arc::clone(&shared),
                Arc::clone(&start),
                to_free.clone(),
            );
            std::thread::spawn(move || {
                let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ ((t as u64 + 1) << 20));
                let mut heap: Vec<Vec<u64>> = Vec::new();
                let check = |chunk: usize, v: &[f32]| {
                    assert_eq!(v[..], values[chunk * CHUNK..(chunk + 1) * CHUNK]);
                };
                start.wait();
                for _ in 0..ROUNDS {
                    let own_file = std::fs::File::open(&path).unwrap();
                    // None only when the table of mappings is full: then just the shared one.
                    let own = Mapping::new(&own_file);
                    // (chunk, Vec, may write): two distinct chunks of the thread's own mapping,
                    // and two of the shared one from those only this thread takes (t, t + 8, ...).
                    let mut mapped = Vec::new();
                    if let Some(own) = &own {
                        let a = rng.below(CHUNKS as u64);
                        let b = (a + 1 + rng.below(CHUNKS as u64 - 1)) % CHUNKS;
                        for chunk in [a, b] {
                            // SAFETY: a and b differ; no other Vec of this mapping exists.
                            let v = unsafe { own.f32s(chunk * CHUNK * 4, CHUNK) }.unwrap();
                            mapped.push((chunk, v, true));
                        }
                    }
                    let j = rng.below((CHUNKS / THREADS) as u64);
                    for chunk in [
                        t + THREADS * j,
                        t + THREADS * ((j + 1) % (CHUNKS / THREADS)),
                    ] {
                        // SAFETY: two different chunks that only this thread takes, and each
                        // Vec of them is gone before the next round takes them again.
                        let v = unsafe { shared.f32s(chunk * CHUNK * 4, CHUNK) }.unwrap();
                        mapped.push((chunk, v, false));
                    }
                    // The Vecs keep the thread's own mapping alive without it.
                    drop(own);
                    for (chunk, mut v, writable) in mapped {
                        check(chunk, &v);
                        match rng.below(5) {
                            0 => {
                                // Growing moves it to the heap.
                                v.push(-1.0);
                                v.extend_from_slice(&[2.0; 100]);
                                check(chunk, &v[..CHUNK]);
                                assert_eq!(v[CHUNK..CHUNK + 2], [-1.0, 2.0]);
                            }
                            1 => {
                                // So does shrinking.
                                v.truncate(10);
                                v.shrink_to_fit();
                                assert_eq!(v[..], values[chunk * CHUNK..chunk * CHUNK + 10]);
                            }
                            2 if writable => {
                                // Written in place (the mapping is copy-on-write), then cloned.
                                v[5] = 7.0;
                                let copy = v.clone();
                                assert_eq!(copy[5], 7.0);
                                assert_eq!(copy[6], values[chunk * CHUNK + 6]);
                            }
                            3 => {
                                // Freed on another thread.
                                to_free.send(v).unwrap();
                                continue;
                            }
                            _ => {}
                        }
                        drop(v);
                    }
                    // Heap churn of many sizes, freed out of order.
                    for _ in 0..20 {
                        let n = 1u64 << rng.below(14);
                        let mut h: Vec<u64> = Vec::with_capacity(rng.below(8));
                        h.extend((0..n).map(|i| i ^ t as u64));
                        heap.push(h);
                        if heap.len() > 16 {
                            let h = heap.swap_remove(rng.below(heap.len() as u64));
                            assert!(h.iter().zip(0u64..).all(|(&x, i)| x == i ^ t as u64));
                        }
                    }
                }
            })
        })
        .collect();
    drop(to_free);
    // This thread frees what the workers send, while they work.
    let mut freed = 0usize;
    for v in freed_elsewhere {
        assert_eq!(v.len(), CHUNK);
        drop(v);
        freed += 1;
    }
    for h in handles {
        h.join().unwrap();
    }
    assert!(freed > 0);
    assert_eq!(mapped(&path), 1, "only the shared mapping should be left");
    drop(shared);
    assert_eq!(mapped(&path), 0, "a mapping outlived its last Vec");
}
