//! `vlm::alloc`: tensors that use a mapped weight file in place. This test binary installs the
//! allocator, as `vlm`'s `main.rs` does, and checks the values, growth, and that the mapping goes
//! away with its last user.
#![cfg(target_os = "linux")]

use std::io::Write;

use vlm::alloc::{mapping_available, Allocator, Mapping};

#[global_allocator]
static ALLOC: Allocator = Allocator;

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
    assert!(mapping_available());
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
