//! Structure checks on the container before any decoder sees it: a JPEG must reach its
//! end-of-image marker, and a RIFF (WebP) file's chunks must fit in the file.

use std::io::{BufRead, Read, Seek, SeekFrom};

/// How every JPEG file starts: the start-of-image marker and the 0xFF of the next marker.
pub(super) const JPEG_SIGNATURE: [u8; 3] = [0xFF, 0xD8, 0xFF];

/// Why a container's structure was refused before decoding.
pub(super) enum StructureError {
    Io(std::io::Error),
    Corrupt(String),
}

/// Runs the check that applies to the stream's format (a JPEG, or a RIFF file holding a WebP),
/// sniffed from its first bytes, and leaves the reader where it was; other formats pass as they
/// are.
pub(super) fn check_structure<R: BufRead + Seek>(reader: &mut R) -> Result<(), StructureError> {
    let head = reader.fill_buf().map_err(StructureError::Io)?;
    if head.len() >= 12 && &head[..4] == b"RIFF" && &head[8..12] == b"WEBP" {
        check_riff_chunks(reader)
    } else if head.starts_with(&JPEG_SIGNATURE) {
        check_jpeg_complete(reader)
    } else {
        Ok(())
    }
}

/// Checks that a JPEG reaches its end-of-image marker, and leaves the reader where it was.
/// zune-jpeg decodes a file cut short in its entropy-coded data "as far as it goes" and fills
/// the rest, so a half-downloaded photo would be classified as half a photo; Pillow (and so
/// transformers) refuses it ("image file is truncated"), even when only the final marker is
/// missing. Walking the marker segments finds that without decoding anything.
fn check_jpeg_complete<R: BufRead + Seek>(reader: &mut R) -> Result<(), StructureError> {
    check_in_place(reader, |r, _, end| walk_jpeg_segments(r, end))
}

/// Runs `check` with the stream's current and end offsets, and puts the reader back where it
/// was, whatever the outcome: the decoder reads the stream next.
fn check_in_place<R: Seek>(
    reader: &mut R,
    check: impl FnOnce(&mut R, u64, u64) -> Result<(), StructureError>,
) -> Result<(), StructureError> {
    let start = reader.stream_position().map_err(StructureError::Io)?;
    let end = reader.seek(SeekFrom::End(0)).map_err(StructureError::Io)?;
    reader
        .seek(SeekFrom::Start(start))
        .map_err(StructureError::Io)?;
    let result = check(reader, start, end);
    reader
        .seek(SeekFrom::Start(start))
        .map_err(StructureError::Io)?;
    result
}

fn walk_jpeg_segments<R: BufRead + Seek>(r: &mut R, end: u64) -> Result<(), StructureError> {
    let truncated = || {
        StructureError::Corrupt(
            "the JPEG data ends before its end-of-image marker (truncated file?)".into(),
        )
    };
    let byte = |r: &mut R| -> Result<Option<u8>, StructureError> {
        let mut b = [0u8; 1];
        match r.read(&mut b).map_err(StructureError::Io)? {
            0 => Ok(None),
            _ => Ok(Some(b[0])),
        }
    };
    // The marker found at the end of entropy-coded data, still to be handled.
    let mut pending: Option<u8> = None;
    loop {
        let marker = match pending.take() {
            Some(m) => m,
            None => {
                // Bytes other than 0xFF between segments are skipped, as libjpeg does (with a
                // warning); any number of 0xFF fill bytes may precede a marker code.
                let mut b = byte(r)?.ok_or_else(truncated)?;
                while b != 0xFF {
                    b = byte(r)?.ok_or_else(truncated)?;
                }
                while b == 0xFF {
                    b = byte(r)?.ok_or_else(truncated)?;
                }
                b
            }
        };
        match marker {
            0xD9 => return Ok(()),
            // Markers without a length: SOI, TEM, RSTn (and a stray stuffed zero).
            0xD8 | 0x01 | 0xD0..=0xD7 | 0x00 => continue,
            _ => {}
        }
        let (Some(hi), Some(lo)) = (byte(r)?, byte(r)?) else {
            return Err(truncated());
        };
        let len = u64::from(u16::from_be_bytes([hi, lo]));
        if len < 2 {
            return Err(StructureError::Corrupt(format!(
                "JPEG segment 0xFF{marker:02X} has an impossible length {len}"
            )));
        }
        let pos = r.stream_position().map_err(StructureError::Io)?;
        if pos + (len - 2) > end {
            return Err(truncated());
        }
        r.seek(SeekFrom::Current((len - 2) as i64))
            .map_err(StructureError::Io)?;
        if marker == 0xDA {
            // Start of scan: entropy-coded data up to the next real marker.
            pending = Some(scan_entropy_coded_data(r)?.ok_or_else(truncated)?);
        }
    }
}

/// Skips entropy-coded data: 0xFF is followed there by a stuffed 0x00 or a restart marker;
/// anything else is the next marker, whose code is returned (None at the end of the data).
fn scan_entropy_coded_data<R: BufRead>(r: &mut R) -> Result<Option<u8>, StructureError> {
    let mut after_ff = false;
    loop {
        let buf = r.fill_buf().map_err(StructureError::Io)?;
        if buf.is_empty() {
            return Ok(None);
        }
        let mut found = None;
        let mut i = 0;
        while i < buf.len() {
            if after_ff {
                match buf[i] {
                    0x00 | 0xD0..=0xD7 => after_ff = false,
                    0xFF => {}
                    code => {
                        found = Some((i + 1, code));
                        break;
                    }
                }
                i += 1;
            } else {
                match buf[i..].iter().position(|&b| b == 0xFF) {
                    Some(p) => {
                        i += p + 1;
                        after_ff = true;
                    }
                    None => i = buf.len(),
                }
            }
        }
        let consumed = found.map_or(buf.len(), |(n, _)| n);
        r.consume(consumed);
        if let Some((_, code)) = found {
            return Ok(Some(code));
        }
    }
}

/// Checks that every top-level chunk of a RIFF (WebP) file fits in the file, and leaves the
/// reader where it was. `image-webp` trusts the declared sizes of metadata chunks and
/// allocates them in one piece before reading (found by fuzzing: a 268-byte file whose EXIF
/// chunk claims 2 GiB, allocated when we ask for the orientation), so a lying size is refused
/// here, before any decoder sees it.
fn check_riff_chunks<R: Read + Seek>(reader: &mut R) -> Result<(), StructureError> {
    check_in_place(reader, |reader, start, end| {
        let mut pos = start + 12;
        let mut header = [0u8; 8];
        loop {
            // Fewer than 8 bytes left: no further chunk header (trailing bytes are the decoder's
            // business, as in libwebp).
            if end.saturating_sub(pos) < 8 {
                return Ok(());
            }
            reader
                .seek(SeekFrom::Start(pos))
                .map_err(StructureError::Io)?;
            reader.read_exact(&mut header).map_err(StructureError::Io)?;
            let [a, b, c, d, s0, s1, s2, s3] = header;
            let size = u64::from(u32::from_le_bytes([s0, s1, s2, s3]));
            let left = end - pos - 8;
            if size > left {
                return Err(StructureError::Corrupt(format!(
                    "WebP chunk {:?} claims {size} bytes but only {left} follow (corrupt or truncated file)",
                    String::from_utf8_lossy(&[a, b, c, d])
                )));
            }
            // Chunks are padded to an even size.
            pos += 8 + size + (size & 1);
        }
    })
}
