//! Decoding: any supported format (sniffed from the content) to RGB8 with the EXIF orientation
//! applied, under [`DecodeLimits`], and [`ImageLoadError`], the one-line error every image
//! step reports.

use std::fs::File;
use std::io::{BufRead, BufReader, Cursor, Seek};
use std::path::{Path, PathBuf};

use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, Limits, RgbImage};

use super::color::convert_to_rgb;
use super::container::{check_structure, StructureError};
use super::jpeg;
use crate::error::single_line;

/// Pillow refuses images above `2 * Image.MAX_IMAGE_PIXELS` (= 2 × 89,478,485) with a
/// `DecompressionBombError`; we use the same threshold by default.
pub const DEFAULT_MAX_PIXELS: u64 = 178_956_970;

/// Limits applied before decoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Images with more pixels than this are refused after reading the header, before any
    /// pixel buffer is allocated. Default [`DEFAULT_MAX_PIXELS`] (Pillow's bomb threshold).
    pub max_pixels: u64,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        Self {
            max_pixels: DEFAULT_MAX_PIXELS,
        }
    }
}

impl DecodeLimits {
    /// The `image` crate's allocation budget: enough for 8 bytes/pixel (RGBA16) at the pixel
    /// limit, and never below the crate's own 512 MiB default.
    fn image_limits(&self) -> Limits {
        let mut limits = Limits::default();
        let ours = self.max_pixels.saturating_mul(8);
        limits.max_alloc = Some(ours.max(limits.max_alloc.unwrap_or(0)));
        limits
    }
}

/// Why an image could not be loaded. Each message is one line naming the source.
#[derive(Debug, thiserror::Error)]
pub enum ImageLoadError {
    #[error("{}: cannot read file: {cause}", .path.display())]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },
    /// A FIFO, a device, a socket: opened without blocking and refused before any read
    /// (reading a FIFO waits for a writer forever; `/dev/zero` never ends).
    #[error("{}: not a regular file ({kind})", .path.display())]
    NotRegular { path: PathBuf, kind: &'static str },
    #[error("{}: empty file (0 bytes), not an image", .path.display())]
    Empty { path: PathBuf },
    #[error("{}: not an image in a supported format ({detail})", .path.display())]
    Unsupported { path: PathBuf, detail: String },
    #[error(
        "{}: image is {width}x{height} = {pixels} pixels, over the limit of {limit} pixels",
        .path.display()
    )]
    TooManyPixels {
        path: PathBuf,
        width: u32,
        height: u32,
        pixels: u64,
        limit: u64,
    },
    #[error("{}: cannot decode image: {detail}", .path.display())]
    Decode { path: PathBuf, detail: String },
    /// The image decoded but the resize/crop step refused it (e.g. an output over
    /// [`MAX_OUTPUT_PIXELS`] without a center crop).
    #[error("{}: {detail}", .path.display())]
    Preprocess { path: PathBuf, detail: String },
}

impl ImageLoadError {
    /// The file (or `<memory>`) the error is about.
    pub fn path(&self) -> &Path {
        match self {
            Self::Io { path, .. }
            | Self::NotRegular { path, .. }
            | Self::Empty { path }
            | Self::Unsupported { path, .. }
            | Self::TooManyPixels { path, .. }
            | Self::Decode { path, .. }
            | Self::Preprocess { path, .. } => path,
        }
    }
}

/// Decodes an image file (format from its content, not its extension), applies its EXIF
/// orientation and converts it to RGB8 like transformers' `convert_to_rgb`.
pub fn load_image(path: &Path, limits: &DecodeLimits) -> Result<RgbImage, ImageLoadError> {
    let file = open_image_file(path)?;
    decode(BufReader::new(file), path, limits, None)
}

/// What a file that is not a regular file is, for messages; `None` for a regular file.
pub(crate) fn special_kind(file_type: &std::fs::FileType) -> Option<&'static str> {
    if file_type.is_file() {
        return None;
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if file_type.is_fifo() {
            return Some("a FIFO");
        }
        if file_type.is_char_device() {
            return Some("a character device");
        }
        if file_type.is_block_device() {
            return Some("a block device");
        }
        if file_type.is_socket() {
            return Some("a socket");
        }
    }
    if file_type.is_dir() {
        return Some("a folder");
    }
    Some("not a file")
}

/// Opens an image file for decoding, refusing anything but a regular file before reading a
/// byte. On Unix the open itself cannot block: `O_NONBLOCK` (which regular files ignore) makes
/// opening a FIFO with no writer return at once, and `fstat` on the open file then says what it
/// is, so a file swapped for a FIFO after the inputs were listed is refused too (issue 20).
/// A character device such as `/dev/zero` reported its offset as 0 after a buffered read,
/// and std's `BufReader::stream_position` panicked subtracting the buffer from it.
pub(crate) fn open_image_file(path: &Path) -> Result<File, ImageLoadError> {
    let io_err = |cause| ImageLoadError::Io {
        path: path.to_path_buf(),
        cause,
    };
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(libc::O_NONBLOCK);
    }
    let file = options.open(path).map_err(io_err)?;
    let file_type = file.metadata().map_err(io_err)?.file_type();
    // Opening a directory succeeds on Unix and only the first read fails ("Is a directory");
    // say so plainly instead.
    if file_type.is_dir() {
        return Err(io_err(std::io::Error::new(
            std::io::ErrorKind::IsADirectory,
            "is a directory, not an image file",
        )));
    }
    if let Some(kind) = special_kind(&file_type) {
        return Err(ImageLoadError::NotRegular {
            path: path.to_path_buf(),
            kind,
        });
    }
    Ok(file)
}

/// Whether `path` can be an image [`load_image`] decodes, from its first bytes only: it opens, is
/// not a folder, is not empty, and starts with a known signature (or is a `.tga`, which has
/// none). The error is the one `load_image` would give. A file that is not a regular file (a
/// FIFO, `/dev/stdin`) passes unread, since reading would consume it. Runs check their inputs
/// with this before loading a model, so that a typo fails in milliseconds (issue 23).
pub fn sniff(path: &Path) -> Result<(), ImageLoadError> {
    use std::io::Read;
    let io_err = |cause| ImageLoadError::Io {
        path: path.to_path_buf(),
        cause,
    };
    let file = File::open(path).map_err(io_err)?;
    let meta = file.metadata().map_err(io_err)?;
    if meta.is_dir() {
        return Err(io_err(std::io::Error::new(
            std::io::ErrorKind::IsADirectory,
            "is a directory, not an image file",
        )));
    }
    if !meta.is_file() {
        return Ok(());
    }
    let mut head = Vec::with_capacity(64);
    file.take(64).read_to_end(&mut head).map_err(io_err)?;
    if head.is_empty() {
        return Err(ImageLoadError::Empty {
            path: path.to_path_buf(),
        });
    }
    if image::guess_format(&head).is_ok()
        || ImageFormat::from_path(path).ok() == Some(ImageFormat::Tga)
    {
        return Ok(());
    }
    Err(ImageLoadError::Unsupported {
        path: path.to_path_buf(),
        detail: "unrecognised file signature".into(),
    })
}

/// [`load_image`] for an in-memory encoded image; errors name the source `<memory>`.
pub fn load_image_from_memory(
    bytes: &[u8],
    limits: &DecodeLimits,
) -> Result<RgbImage, ImageLoadError> {
    decode(Cursor::new(bytes), Path::new("<memory>"), limits, None)
}

/// `reduce`: a JPEG's bytes and the short side to keep, for a DCT-reduced decode once the header
/// checks (pixel limit, orientation) have passed; the full decode runs when it does not apply.
pub(super) fn decode<R: BufRead + Seek>(
    mut reader: R,
    path: &Path,
    limits: &DecodeLimits,
    reduce: Option<(&[u8], u32)>,
) -> Result<RgbImage, ImageLoadError> {
    let io_err = |cause| ImageLoadError::Io {
        path: path.to_path_buf(),
        cause,
    };
    // An empty file is common (an interrupted download or copy) and deserves a plainer message
    // than "unrecognised file signature".
    let head = reader.fill_buf().map_err(io_err)?;
    if head.is_empty() {
        return Err(ImageLoadError::Empty {
            path: path.to_path_buf(),
        });
    }
    let structure_err = |e| match e {
        StructureError::Io(cause) => io_err(cause),
        StructureError::Corrupt(detail) => ImageLoadError::Decode {
            path: path.to_path_buf(),
            detail,
        },
    };
    check_structure(&mut reader).map_err(structure_err)?;
    let image_err = |e: image::ImageError| match e {
        // The file was opened and read; running out of data means it is cut short, which is a
        // problem with the image, not with reading the file.
        image::ImageError::IoError(cause) if cause.kind() == std::io::ErrorKind::UnexpectedEof => {
            ImageLoadError::Decode {
                path: path.to_path_buf(),
                detail: "the file ends too early (truncated?)".into(),
            }
        }
        image::ImageError::IoError(cause) => io_err(cause),
        image::ImageError::Unsupported(u) => ImageLoadError::Unsupported {
            path: path.to_path_buf(),
            // Decoder messages may carry line breaks (zune-jpeg ends some with `\n`).
            detail: single_line(&u.to_string()),
        },
        other => ImageLoadError::Decode {
            path: path.to_path_buf(),
            detail: single_line(&other.to_string()),
        },
    };

    let mut reader = ImageReader::new(reader)
        .with_guessed_format()
        .map_err(io_err)?;
    // TGA has no signature, so content sniffing never finds it; Pillow accepts it from its
    // header fields. Trust a `.tga` extension only when the content says nothing else.
    if reader.format().is_none() && ImageFormat::from_path(path).ok() == Some(ImageFormat::Tga) {
        reader.set_format(ImageFormat::Tga);
    }
    if reader.format().is_none() {
        return Err(ImageLoadError::Unsupported {
            path: path.to_path_buf(),
            detail: "unrecognised file signature".into(),
        });
    }
    let image_limits = limits.image_limits();
    reader.limits(image_limits.clone());
    // Constructing the decoder reads only the header.
    let mut decoder = reader.into_decoder().map_err(image_err)?;
    let (width, height) = decoder.dimensions();
    let pixels = u64::from(width) * u64::from(height);
    if pixels > limits.max_pixels {
        return Err(ImageLoadError::TooManyPixels {
            path: path.to_path_buf(),
            width,
            height,
            pixels,
            limit: limits.max_pixels,
        });
    }
    if width == 0 || height == 0 {
        return Err(ImageLoadError::Decode {
            path: path.to_path_buf(),
            detail: format!("image has no pixels ({width}x{height})"),
        });
    }
    // `ImageReader::decode` does this check too; `into_decoder` does not.
    if let Some(max_alloc) = image_limits.max_alloc {
        if decoder.total_bytes() > max_alloc {
            return Err(ImageLoadError::Decode {
                path: path.to_path_buf(),
                detail: format!(
                    "decoded image would need {} bytes, over the {max_alloc} byte limit",
                    decoder.total_bytes()
                ),
            });
        }
    }
    // A corrupt EXIF block should not make an otherwise fine image unusable, so an unreadable
    // orientation counts as "no transform".
    let orientation = decoder
        .orientation()
        .unwrap_or(image::metadata::Orientation::NoTransforms);
    if let Some(reduced) = reduce.and_then(|(bytes, min)| jpeg::decode_reduced(bytes, min)) {
        let mut img = DynamicImage::ImageRgb8(reduced);
        img.apply_orientation(orientation);
        return Ok(convert_to_rgb(img));
    }
    // `from_decoder` allocates the pixel buffer with `vec!`, which aborts the whole process when
    // the allocator says no (possible once `--max-pixels` is raised and a header lies about
    // the size). Asking for the same amount fallibly first turns that into this file's error.
    let total = usize::try_from(decoder.total_bytes()).unwrap_or(usize::MAX);
    if Vec::<u8>::new().try_reserve_exact(total).is_err() {
        return Err(ImageLoadError::Decode {
            path: path.to_path_buf(),
            detail: format!("cannot allocate {total} bytes for the decoded image"),
        });
    }
    let mut img = DynamicImage::from_decoder(decoder).map_err(image_err)?;
    // `PIL.ImageOps.exif_transpose`, as in `transformers.image_utils.load_image`.
    img.apply_orientation(orientation);
    Ok(convert_to_rgb(img))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::images::test_util::{encode, fixture};
    use image::Rgb;

    /// A JPEG whose APP1 segment carries only an EXIF orientation tag.
    fn jpeg_with_orientation(img: &RgbImage, orientation: u16) -> Vec<u8> {
        let jpeg = encode(&DynamicImage::ImageRgb8(img.clone()), ImageFormat::Jpeg);
        assert_eq!(&jpeg[..2], &[0xFF, 0xD8]);
        let mut tiff = Vec::new();
        tiff.extend_from_slice(b"II\x2A\x00");
        tiff.extend_from_slice(&8u32.to_le_bytes()); // IFD0 offset
        tiff.extend_from_slice(&1u16.to_le_bytes()); // one entry
        tiff.extend_from_slice(&0x0112u16.to_le_bytes()); // Orientation
        tiff.extend_from_slice(&3u16.to_le_bytes()); // SHORT
        tiff.extend_from_slice(&1u32.to_le_bytes()); // count
        tiff.extend_from_slice(&orientation.to_le_bytes());
        tiff.extend_from_slice(&[0, 0]);
        tiff.extend_from_slice(&0u32.to_le_bytes()); // no next IFD
        let mut app1 = vec![0xFF, 0xE1];
        app1.extend_from_slice(&((2 + 6 + tiff.len()) as u16).to_be_bytes());
        app1.extend_from_slice(b"Exif\0\0");
        app1.extend_from_slice(&tiff);
        let mut out = jpeg[..2].to_vec();
        out.extend_from_slice(&app1);
        out.extend_from_slice(&jpeg[2..]);
        out
    }

    #[test]
    fn exif_orientation_is_applied() {
        // 16x8: left half red, right half blue. Orientation 6 = rotate 90° clockwise
        // (PIL exif_transpose uses ROTATE_270), giving 8x16 with red on top.
        let img = RgbImage::from_fn(16, 8, |x, _| {
            if x < 8 {
                Rgb([255, 0, 0])
            } else {
                Rgb([0, 0, 255])
            }
        });
        let rotated =
            load_image_from_memory(&jpeg_with_orientation(&img, 6), &DecodeLimits::default())
                .unwrap();
        assert_eq!(rotated.dimensions(), (8, 16));
        let top = rotated.get_pixel(4, 3).0;
        let bottom = rotated.get_pixel(4, 12).0;
        assert!(top[0] > 200 && top[2] < 60, "top {top:?}");
        assert!(bottom[2] > 200 && bottom[0] < 60, "bottom {bottom:?}");

        let plain =
            load_image_from_memory(&jpeg_with_orientation(&img, 1), &DecodeLimits::default())
                .unwrap();
        assert_eq!(plain.dimensions(), (16, 8));
    }

    #[test]
    fn load_errors_are_one_line_and_name_the_source() {
        let limits = DecodeLimits::default();
        let missing = fixture("images/no-such-image.png");
        let err = load_image(&missing, &limits).unwrap_err();
        assert!(matches!(err, ImageLoadError::Io { .. }));
        let msg = err.to_string();
        assert!(
            msg.contains("no-such-image.png") && !msg.contains('\n'),
            "{msg}"
        );

        let err = load_image_from_memory(b"definitely not an image", &limits).unwrap_err();
        assert!(matches!(err, ImageLoadError::Unsupported { .. }), "{err}");
        assert!(err.to_string().starts_with("<memory>: "), "{err}");

        // A PNG with its pixel data cut off.
        let png = encode(
            &DynamicImage::ImageRgb8(RgbImage::new(64, 64)),
            ImageFormat::Png,
        );
        let err = load_image_from_memory(&png[..png.len() / 2], &limits).unwrap_err();
        assert!(
            matches!(
                err,
                ImageLoadError::Decode { .. } | ImageLoadError::Io { .. }
            ),
            "{err}"
        );
        assert!(!err.to_string().contains('\n'));

        // The extension is irrelevant: a PNG named .jpg loads.
        let dir = tempfile::tempdir().unwrap();
        let liar = dir.path().join("actually-a-png.jpg");
        std::fs::write(&liar, &png).unwrap();
        assert_eq!(load_image(&liar, &limits).unwrap().dimensions(), (64, 64));
    }

    #[test]
    fn sniff_refuses_what_load_image_refuses_with_the_same_message() {
        let limits = DecodeLimits::default();
        let dir = tempfile::tempdir().unwrap();
        let png = encode(
            &DynamicImage::ImageRgb8(RgbImage::new(8, 8)),
            ImageFormat::Png,
        );
        let good = dir.path().join("good.data");
        std::fs::write(&good, &png).unwrap();
        assert!(sniff(&good).is_ok());
        let text = dir.path().join("notes.txt");
        std::fs::write(&text, "just words").unwrap();
        let empty = dir.path().join("empty.jpg");
        std::fs::write(&empty, "").unwrap();
        let missing = dir.path().join("missing.jpg");
        for bad in [&text, &empty, &missing, &dir.path().to_path_buf()] {
            let sniffed = sniff(bad).unwrap_err().to_string();
            let loaded = load_image(bad, &limits).unwrap_err().to_string();
            assert_eq!(sniffed, loaded, "{}", bad.display());
        }
    }

    #[test]
    fn pixel_limit_is_checked_before_decoding() {
        let png = encode(
            &DynamicImage::ImageRgb8(RgbImage::new(100, 50)),
            ImageFormat::Png,
        );
        let err = load_image_from_memory(&png, &DecodeLimits { max_pixels: 4999 }).unwrap_err();
        match &err {
            ImageLoadError::TooManyPixels {
                width: 100,
                height: 50,
                pixels: 5000,
                limit: 4999,
                ..
            } => {}
            other => panic!("unexpected {other:?}"),
        }
        assert!(load_image_from_memory(&png, &DecodeLimits { max_pixels: 5000 }).is_ok());

        // A forged header claiming 100000x100000 is refused without allocating 30 GB: patch
        // the IHDR width/height (CRC is then wrong, but the size check comes first or the
        // decoder rejects the header — either way no panic and no huge allocation).
        let mut forged = png.clone();
        forged[16..20].copy_from_slice(&100_000u32.to_be_bytes());
        forged[20..24].copy_from_slice(&100_000u32.to_be_bytes());
        assert!(load_image_from_memory(&forged, &DecodeLimits::default()).is_err());
    }

    #[cfg(unix)]
    #[test]
    fn fifos_and_devices_are_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("pipe.png");
        let c_path = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path; mkfifo only creates the node.
        assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o644) }, 0);
        // No writer: a blocking open would never return.
        let err = load_image(&fifo, &DecodeLimits::default()).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("{}: not a regular file (a FIFO)", fifo.display())
        );
        // Before: std's BufReader::stream_position panicked on /dev/zero's offset of 0.
        let err = load_image(Path::new("/dev/zero"), &DecodeLimits::default()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "/dev/zero: not a regular file (a character device)"
        );
    }
}
