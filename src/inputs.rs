//! Turns what the user named (files, folders, globs, `--files-from` lists) into the ordered,
//! deduplicated list of images a run processes, and picks one `--shard` of it.
//!
//! Collecting never stops at a bad input: a folder that cannot be read or a glob that matches nothing
//! becomes an [`Input`] carrying its error, reported in the output like an image that failed to decode.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::{Context, Result};

/// File name extensions (lower case) that folder walking and globs pick up: the formats the `image`
/// crate decodes with vlm's features. Files named explicitly are never filtered.
pub(crate) const IMAGE_EXTENSIONS: &[&str] = &[
    "jpg", "jpeg", "jpe", "jfif", "png", "apng", "gif", "webp", "tif", "tiff", "bmp", "dib", "ico",
    "pnm", "pbm", "pgm", "ppm", "pam", "tga", "qoi", "hdr", "exr", "ff", "dds",
];

/// What a folder without images says (`vlm eval` counts such a class folder as empty).
pub(crate) const NO_IMAGES: &str = "no image files in this folder";

/// One entry of the run: a file to process, or an input that failed before it got that far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Input {
    pub path: PathBuf,
    /// Why this input yields no image (e.g. an unreadable folder); `None` for a file to process.
    pub error: Option<String>,
}

impl Input {
    fn file(path: PathBuf) -> Self {
        Self { path, error: None }
    }

    fn failed(path: PathBuf, error: impl Into<String>) -> Self {
        Self {
            path,
            error: Some(error.into()),
        }
    }
}

/// `--shard K/N`: the K-th (1-based) of N parts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Shard {
    pub index: u32,
    pub count: u32,
}

impl FromStr for Shard {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("{s:?}: expected K/N with 1 <= K <= N, e.g. 3/8");
        let (k, n) = s.split_once('/').ok_or_else(bad)?;
        let index: u32 = k.trim().parse().map_err(|_| bad())?;
        let count: u32 = n.trim().parse().map_err(|_| bad())?;
        if index == 0 || count == 0 || index > count {
            return Err(bad());
        }
        Ok(Self { index, count })
    }
}

impl Shard {
    /// Whether `path` belongs to this shard. The part is a hash of the path's bytes as given (FNV-1a,
    /// 64 bit), not its position in the list: every machine of a job array agrees without seeing the
    /// others, and a file keeps its shard when other files are added or removed. This function is part
    /// of the documented recipe; changing it would reshuffle users' job arrays.
    pub(crate) fn contains(&self, path: &Path) -> bool {
        (fnv1a(path.as_os_str().as_encoded_bytes()) % u64::from(self.count))
            == u64::from(self.index - 1)
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// How to turn arguments into inputs.
#[derive(Debug, Clone, Default)]
pub(crate) struct InputOptions {
    /// Descend into subfolders of the folders given.
    pub recursive: bool,
    /// Include hidden files and folders (names starting with `.`) when walking.
    pub hidden: bool,
    /// Take every file when walking or globbing, not only image extensions.
    pub all_files: bool,
    /// Lists of inputs, `-` for stdin.
    pub files_from: Vec<PathBuf>,
    /// The lists are NUL-separated (`find -print0`), not newline-separated.
    pub null_separated: bool,
    pub shard: Option<Shard>,
}

/// All inputs in order: command-line arguments first, then each list. Folders expand in place to
/// their images, sorted by name; duplicates (the same file reached twice, by any path) keep their first
/// position. `stdin` is read when a list is `-`.
pub(crate) fn collect(
    args: &[PathBuf],
    opts: &InputOptions,
    stdin: &mut dyn Read,
) -> Result<Vec<Input>> {
    let mut walker = Walker {
        opts,
        seen: HashSet::new(),
        out: Vec::new(),
    };
    for arg in args {
        walker.argument(arg);
    }
    let mut stdin_used = false;
    for list in &opts.files_from {
        let bytes = if list.as_os_str() == "-" {
            if stdin_used {
                anyhow::bail!(crate::Error::Usage(
                    "--files-from -: stdin can be read only once".into()
                ));
            }
            stdin_used = true;
            let mut bytes = Vec::new();
            stdin
                .read_to_end(&mut bytes)
                .context("--files-from -: cannot read stdin")?;
            bytes
        } else {
            fs::read(list).with_context(|| format!("--files-from {}", list.display()))?
        };
        for entry in split_list(&bytes, opts.null_separated) {
            walker.argument(&path_from_bytes(entry));
        }
    }
    let mut inputs = walker.out;
    if let Some(shard) = opts.shard {
        inputs.retain(|i| shard.contains(&i.path));
    }
    Ok(inputs)
}

/// Entries of a `--files-from` list. Newline-separated lists drop a trailing `\r` (a list written on
/// Windows) and skip empty lines; NUL-separated lists take names byte for byte.
fn split_list(bytes: &[u8], null_separated: bool) -> Vec<&[u8]> {
    let sep = if null_separated { b'\0' } else { b'\n' };
    bytes
        .split(|&b| b == sep)
        .map(|e| {
            if null_separated {
                e
            } else {
                e.strip_suffix(b"\r").unwrap_or(e)
            }
        })
        .filter(|e| !e.is_empty())
        .collect()
}

#[cfg(unix)]
fn path_from_bytes(bytes: &[u8]) -> PathBuf {
    use std::os::unix::ffi::OsStrExt;
    PathBuf::from(OsStr::from_bytes(bytes))
}

#[cfg(not(unix))]
fn path_from_bytes(bytes: &[u8]) -> PathBuf {
    // File names outside Unix are Unicode; a list that is not UTF-8 cannot name them exactly.
    PathBuf::from(String::from_utf8_lossy(bytes).into_owned())
}

/// A file's identity: its device and inode, so that two paths to one file (a symlink, `./a` and
/// `a`, `x/../x/a`, a hard link) are one input. Elsewhere than Unix, its canonical path.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct FileId(#[cfg(unix)] (u64, u64), #[cfg(not(unix))] PathBuf);

impl FileId {
    /// The identity of the file `path` reaches (symlinks followed); `None` when it cannot be
    /// read.
    pub(crate) fn of_path(path: &Path) -> Option<FileId> {
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt;
            fs::metadata(path).ok().map(|m| FileId((m.dev(), m.ino())))
        }
        #[cfg(not(unix))]
        {
            fs::canonicalize(path).ok().map(FileId)
        }
    }
}

/// How an input is recognised as seen before: its identity, or the path when it has none (a
/// missing file, which still becomes a record of its own).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum FileKey {
    Id(FileId),
    Path(PathBuf),
}

struct Walker<'a> {
    opts: &'a InputOptions,
    /// The files already listed, by identity.
    seen: HashSet<FileKey>,
    out: Vec<Input>,
}

impl Walker<'_> {
    /// One argument or list entry: a file (never filtered), a folder (walked), or a glob pattern
    /// for shells that do not expand them (`vlm classify "photos/*.jpg"` on Windows).
    fn argument(&mut self, path: &Path) {
        match fs::metadata(path) {
            Ok(meta) if meta.is_dir() => {
                let before = self.out.len();
                let mut ancestors = Vec::new();
                self.folder(path, &mut ancestors);
                if self.out.len() == before {
                    // --recursive can only help where there are subfolders to walk.
                    let has_subfolders = fs::read_dir(path).is_ok_and(|entries| {
                        entries
                            .flatten()
                            .any(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    });
                    let hint = if self.opts.recursive || !has_subfolders {
                        ""
                    } else {
                        " (use --recursive to include subfolders)"
                    };
                    self.out.push(Input::failed(
                        path.to_path_buf(),
                        format!("{}: {NO_IMAGES}{hint}", path.display()),
                    ));
                }
            }
            Ok(_) => self.push_file(path.to_path_buf()),
            Err(_) if is_glob(path) => self.glob(path),
            // `vlm classify -`: a list on stdin is `--files-from -`.
            Err(_) if path.as_os_str() == "-" => self.out.push(Input::failed(
                path.to_path_buf(),
                "-: no such file (to read a list of images from stdin, use --files-from -)"
                    .to_string(),
            )),
            // Missing or unreadable files are still inputs: the decoder reports them with the
            // path, in order, like any other failed image.
            Err(_) => self.push_file(path.to_path_buf()),
        }
    }

    fn push_file(&mut self, path: PathBuf) {
        let key = match FileId::of_path(&path) {
            Some(id) => FileKey::Id(id),
            None => FileKey::Path(fs::canonicalize(&path).unwrap_or_else(|_| path.clone())),
        };
        if !self.seen.insert(key) {
            return;
        }
        // `stat`, never `open`: opening a FIFO waits for a writer, forever (issue 20). Refused
        // here, it is one error record like any unreadable file; the decoder checks again on the
        // open file (`images::decode::open_image_file`), for a file swapped since.
        match fs::metadata(&path)
            .ok()
            .and_then(|m| crate::images::special_kind(&m.file_type()))
        {
            Some(kind) => {
                let message = format!("{}: not a regular file ({kind})", path.display());
                self.out.push(Input::failed(path, message));
            }
            None => self.out.push(Input::file(path)),
        }
    }

    fn wanted(&self, name: &OsStr) -> bool {
        let bytes = name.as_encoded_bytes();
        if !self.opts.hidden && bytes.first() == Some(&b'.') {
            return false;
        }
        self.opts.all_files || has_image_extension(Path::new(name))
    }

    /// Walks a folder depth-first, entries sorted by name. `ancestors` holds the canonical paths of
    /// the folders above, so a symlink back up the tree is skipped instead of walked forever.
    fn folder(&mut self, dir: &Path, ancestors: &mut Vec<PathBuf>) {
        let canonical = fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
        if ancestors.contains(&canonical) {
            return;
        }
        let entries = match fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) => {
                self.out.push(Input::failed(
                    dir.to_path_buf(),
                    format!("{}: cannot read folder: {e}", dir.display()),
                ));
                return;
            }
        };
        let mut names: Vec<(PathBuf, bool)> = Vec::new();
        for entry in entries {
            let entry = match entry {
                Ok(entry) => entry,
                Err(e) => {
                    self.out.push(Input::failed(
                        dir.to_path_buf(),
                        format!("{}: cannot read folder entry: {e}", dir.display()),
                    ));
                    continue;
                }
            };
            let path = entry.path();
            // `metadata` follows symlinks: a link to a folder is walked, a dangling link is a file
            // that will fail to open, and is reported.
            let is_dir = fs::metadata(&path).is_ok_and(|m| m.is_dir());
            names.push((path, is_dir));
        }
        names.sort();
        ancestors.push(canonical);
        for (path, is_dir) in names {
            let Some(name) = path.file_name() else {
                continue;
            };
            if is_dir {
                let hidden = name.as_encoded_bytes().first() == Some(&b'.');
                if self.opts.recursive && (self.opts.hidden || !hidden) {
                    self.folder(&path, ancestors);
                }
            } else if self.wanted(name) {
                self.push_file(path);
            }
        }
        ancestors.pop();
    }

    fn glob(&mut self, pattern: &Path) {
        let Some(text) = pattern.to_str() else {
            self.push_file(pattern.to_path_buf());
            return;
        };
        let options = glob::MatchOptions {
            require_literal_leading_dot: !self.opts.hidden,
            ..glob::MatchOptions::new()
        };
        let paths = match glob::glob_with(text, options) {
            Ok(paths) => paths,
            Err(e) => {
                self.out.push(Input::failed(
                    pattern.to_path_buf(),
                    format!("{text}: not a file, and not a valid glob pattern: {e}"),
                ));
                return;
            }
        };
        let before = self.out.len();
        for entry in paths {
            match entry {
                Ok(path) if path.is_dir() => {}
                Ok(path) => {
                    if self.opts.all_files || has_image_extension(&path) {
                        self.push_file(path);
                    }
                }
                Err(e) => self.out.push(Input::failed(
                    e.path().to_path_buf(),
                    format!("{}: {}", e.path().display(), e.error()),
                )),
            }
        }
        if self.out.len() == before {
            self.out.push(Input::failed(
                pattern.to_path_buf(),
                format!("{text}: no such file, and no image file matches it as a pattern"),
            ));
        }
    }
}

fn is_glob(path: &Path) -> bool {
    path.to_str().is_some_and(|s| s.contains(['*', '?', '[']))
}

fn has_image_extension(path: &Path) -> bool {
    path.extension()
        .and_then(OsStr::to_str)
        .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(path: &Path) {
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).unwrap();
        }
        fs::write(path, b"x").unwrap();
    }

    fn names(inputs: &[Input], root: &Path) -> Vec<String> {
        inputs
            .iter()
            .map(|i| {
                let p = i.path.strip_prefix(root).unwrap_or(&i.path);
                let mut s = p.to_string_lossy().replace('\\', "/");
                if i.error.is_some() {
                    s.push_str(" (error)");
                }
                s
            })
            .collect()
    }

    fn run(args: &[PathBuf], opts: &InputOptions) -> Vec<Input> {
        collect(args, opts, &mut std::io::empty()).unwrap()
    }

    fn tree() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for f in [
            "b.jpg",
            "a.PNG",
            "notes.txt",
            ".hidden.jpg",
            "sub/c.webp",
            "sub/deeper/d.gif",
            ".dot/e.jpg",
        ] {
            touch(&dir.path().join(f));
        }
        dir
    }

    #[test]
    fn folders_list_images_sorted_and_recurse_only_when_asked() {
        let dir = tree();
        let root = dir.path();
        let flat = run(&[root.to_path_buf()], &InputOptions::default());
        assert_eq!(names(&flat, root), ["a.PNG", "b.jpg"]);
        let opts = InputOptions {
            recursive: true,
            ..Default::default()
        };
        let deep = run(&[root.to_path_buf()], &opts);
        assert_eq!(
            names(&deep, root),
            ["a.PNG", "b.jpg", "sub/c.webp", "sub/deeper/d.gif"]
        );
        let opts = InputOptions {
            recursive: true,
            hidden: true,
            all_files: true,
            ..Default::default()
        };
        let all = run(&[root.to_path_buf()], &opts);
        assert_eq!(
            names(&all, root),
            [
                ".dot/e.jpg",
                ".hidden.jpg",
                "a.PNG",
                "b.jpg",
                "notes.txt",
                "sub/c.webp",
                "sub/deeper/d.gif"
            ]
        );
    }

    #[test]
    fn explicit_files_are_never_filtered_and_duplicates_keep_first_place() {
        let dir = tree();
        let root = dir.path();
        let args = vec![
            root.join("notes.txt"),
            root.join("b.jpg"),
            root.to_path_buf(),
            root.join("sub/../b.jpg"),
            root.join("missing.jpg"),
            root.join("missing.jpg"),
        ];
        let got = run(&args, &InputOptions::default());
        assert_eq!(
            names(&got, root),
            ["notes.txt", "b.jpg", "a.PNG", "missing.jpg"]
        );
    }

    #[test]
    fn an_empty_folder_is_an_error_input() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("empty")).unwrap();
        let got = run(&[dir.path().join("empty")], &InputOptions::default());
        assert_eq!(got.len(), 1);
        let err = got[0].error.as_deref().unwrap();
        assert!(err.contains("empty: no image files"), "{err}");
        // No subfolders: --recursive would not help, so it is not suggested.
        assert!(!err.contains("--recursive"), "{err}");
        // With a subfolder, it is.
        fs::create_dir(dir.path().join("empty/sub")).unwrap();
        let got = run(&[dir.path().join("empty")], &InputOptions::default());
        let err = got[0].error.as_deref().unwrap();
        assert!(err.contains("--recursive"), "{err}");
    }

    #[test]
    fn a_dash_points_to_files_from() {
        let got = run(&[PathBuf::from("-")], &InputOptions::default());
        let err = got[0].error.as_deref().unwrap();
        assert!(err.contains("--files-from -"), "{err}");
    }

    #[cfg(unix)]
    #[test]
    fn symlinks_are_followed_and_loops_are_cut() {
        let dir = tree();
        let root = dir.path();
        std::os::unix::fs::symlink(root, root.join("sub/loop")).unwrap();
        std::os::unix::fs::symlink(root.join("b.jpg"), root.join("sub/link.jpg")).unwrap();
        std::os::unix::fs::symlink(root.join("gone.jpg"), root.join("sub/dangling.jpg")).unwrap();
        let opts = InputOptions {
            recursive: true,
            ..Default::default()
        };
        let got = run(&[root.to_path_buf()], &opts);
        // link.jpg is b.jpg again (deduplicated); the dangling link is listed and will fail to open.
        assert_eq!(
            names(&got, root),
            [
                "a.PNG",
                "b.jpg",
                "sub/c.webp",
                "sub/dangling.jpg",
                "sub/deeper/d.gif"
            ]
        );
    }

    #[test]
    fn globs_expand_when_the_shell_did_not() {
        let dir = tree();
        let root = dir.path();
        let got = run(
            &[root.join("*.jpg"), root.join("sub/*")],
            &InputOptions::default(),
        );
        assert_eq!(names(&got, root), ["b.jpg", "sub/c.webp"]);
        let none = run(&[root.join("*.bmp")], &InputOptions::default());
        assert_eq!(names(&none, root), ["*.bmp (error)"]);
    }

    #[test]
    fn lists_split_on_newlines_or_nuls() {
        let list = b"a b.jpg\r\n\nline\nbreak.jpg\n";
        assert_eq!(
            split_list(list, false),
            [&b"a b.jpg"[..], b"line", b"break.jpg"]
        );
        let list = b"a b.jpg\0line\nbreak.jpg\0\0";
        assert_eq!(
            split_list(list, true),
            [&b"a b.jpg"[..], b"line\nbreak.jpg"]
        );
    }

    #[cfg(unix)]
    #[test]
    fn stdin_lists_keep_odd_names_byte_for_byte() {
        let opts = InputOptions {
            files_from: vec![PathBuf::from("-")],
            null_separated: true,
            ..Default::default()
        };
        let mut stdin: &[u8] = b"x\xff.jpg\0new\nline.jpg\0";
        let got = collect(&[], &opts, &mut stdin).unwrap();
        let bytes: Vec<&[u8]> = got
            .iter()
            .map(|i| i.path.as_os_str().as_encoded_bytes())
            .collect();
        assert_eq!(bytes, [&b"x\xff.jpg"[..], b"new\nline.jpg"]);
        let twice = InputOptions {
            files_from: vec![PathBuf::from("-"), PathBuf::from("-")],
            ..Default::default()
        };
        assert!(collect(&[], &twice, &mut std::io::empty()).is_err());
    }

    #[test]
    fn shards_partition_the_inputs() {
        let paths: Vec<PathBuf> = (0..1000)
            .map(|i| PathBuf::from(format!("photos/{i:04}.jpg")))
            .collect();
        let all = run(&paths, &InputOptions::default());
        for n in [1u32, 2, 3, 7] {
            let mut union = Vec::new();
            let mut seen = HashSet::new();
            for k in 1..=n {
                let opts = InputOptions {
                    shard: Some(Shard { index: k, count: n }),
                    ..Default::default()
                };
                let part = run(&paths, &opts);
                // Roughly balanced: no part is empty or more than twice its share.
                assert!(!part.is_empty() && part.len() < 2 * 1000 / n as usize + 10);
                for input in part {
                    assert!(seen.insert(input.path.clone()), "overlap at {k}/{n}");
                    union.push(input);
                }
            }
            // Union = all, and each shard keeps the input order.
            union.sort_by(|a, b| a.path.cmp(&b.path));
            assert_eq!(union, all);
        }
    }

    #[test]
    fn shard_syntax() {
        assert_eq!("2/5".parse::<Shard>(), Ok(Shard { index: 2, count: 5 }));
        for bad in ["0/3", "4/3", "3", "a/b", "1/0", ""] {
            assert!(bad.parse::<Shard>().is_err(), "{bad}");
        }
    }
}
