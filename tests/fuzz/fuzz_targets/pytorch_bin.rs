//! Arbitrary bytes as a PyTorch checkpoint (`pytorch_model.bin`), read as data by
//! `vlm::model::pytorch::read_tensors`, and as the pickle inside one (`data.pkl`).
//!
//! An input starting with `PK` is a whole archive (seeds: real `torch.save` files, whose mutations
//! reach the zip directory, the records and the storage entries; the pickle's CRC stops most
//! mutations of the pickle itself). Any other input is a pickle: run alone through
//! `pickle::state_dict`, then wrapped in an archive as torch.save lays one out, with storages
//! `0` (16 f32), `1` (6 bytes) and `2` (empty), so that its tensors are checked against real
//! entries. Nothing may panic, run, or allocate more than the input allows, and what is accepted
//! must keep the promises the loader relies on: every tensor inside the file, a contiguous one
//! exactly its elements long, a strided one no more elements than its range holds.
#![no_main]

use std::io::{Cursor, Write};

use libfuzzer_sys::fuzz_target;
use vlm::model::pickle::state_dict;
use vlm::model::pytorch::{gather, read_tensors};

fn check(file: &[u8]) {
    let Ok(tensors) = read_tensors(Cursor::new(file)) else {
        return;
    };
    for t in &tensors {
        assert!(t.range.start <= t.range.end && t.range.end <= file.len() as u64, "{t:?}");
        let elem = t.dtype.size_in_bytes();
        let numel: usize = t.shape.iter().product();
        let bytes = &file[t.range.start as usize..t.range.end as usize];
        match &t.strides {
            None => assert_eq!(bytes.len(), numel * elem, "{t:?}"),
            Some(strides) => {
                let out = gather(bytes, &t.shape, strides, elem).expect("a strided tensor inside its range");
                assert_eq!(out.len(), numel * elem);
                assert!(out.len() <= file.len());
            }
        }
    }
}

fn archive(pickle: &[u8]) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    let mut zip = zip::ZipWriter::new(&mut out);
    let opts = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Stored)
        .with_alignment(64);
    let entries: [(&str, &[u8]); 6] = [
        ("archive/data.pkl", pickle),
        ("archive/byteorder", b"little"),
        ("archive/data/0", &[0x3f; 64]),
        ("archive/data/1", &[1; 6]),
        ("archive/data/2", &[]),
        ("archive/version", b"3\n"),
    ];
    for (name, bytes) in entries {
        zip.start_file(name, opts).unwrap();
        zip.write_all(bytes).unwrap();
    }
    zip.finish().unwrap();
    out.into_inner()
}

fuzz_target!(|data: &[u8]| {
    if data.starts_with(b"PK") {
        check(data);
    } else {
        let _ = state_dict(data);
        check(&archive(data));
    }
});
