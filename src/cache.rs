//! The vlm cache folder, and how every file in it is replaced: the text cache (`text/cache.rs`)
//! and the packed-weight cache (`model/packs.rs`) share both.

use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// The user's cache dir: `$VLM_CACHE_DIR` if set, else `$XDG_CACHE_HOME/vlm`, else
/// `$HOME/.cache/vlm` (on Windows `%LOCALAPPDATA%\vlm`); `None` if none can be determined.
pub(crate) fn default_dir() -> Option<PathBuf> {
    let var = std::env::var_os;
    if cfg!(windows) {
        dir_from_env(var("VLM_CACHE_DIR"), None, None)
            .or_else(|| non_empty(var("LOCALAPPDATA")).map(|d| PathBuf::from(d).join("vlm")))
    } else {
        dir_from_env(var("VLM_CACHE_DIR"), var("XDG_CACHE_HOME"), var("HOME"))
    }
}

/// Replaces the file at `path` (its folder made if missing) with what `write` writes, atomically:
/// readers see the old file or the new one, never a part, and concurrent writers are safe (the
/// last rename wins). The temporary file lives in the destination folder so the rename cannot
/// cross file systems; the rename replaces a symlink at `path` rather than writing through it.
/// No fsync: every cache file is checksummed, and a torn one is recomputed.
pub(crate) fn replace(
    path: &Path,
    write: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> Result<()> {
    let folder = path
        .parent()
        .with_context(|| format!("cache entry {} has no folder", path.display()))?;
    std::fs::create_dir_all(folder)
        .with_context(|| format!("cannot create cache folder {}", folder.display()))?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".vlm-")
        .suffix(".tmp")
        .tempfile_in(folder)
        .with_context(|| format!("cannot create a temporary file in {}", folder.display()))?;
    let tmp_name = tmp.path().display().to_string();
    {
        let mut w = std::io::BufWriter::with_capacity(1 << 20, tmp.as_file_mut());
        write(&mut w)
            .and_then(|()| w.flush())
            .with_context(|| format!("cannot write {tmp_name}"))?;
    }
    tmp.persist(path)
        .map_err(|e| e.error)
        .with_context(|| format!("cannot write cache entry {}", path.display()))?;
    Ok(())
}

/// The cache dir from the environment's values (passed in so tests need not touch the process
/// environment): `vlm` as given, else `xdg/vlm`, else `home/.cache/vlm`. Empty values count as unset,
/// and a relative `XDG_CACHE_HOME` is ignored, as the XDG base-directory spec says.
pub(crate) fn dir_from_env(
    vlm: Option<OsString>,
    xdg: Option<OsString>,
    home: Option<OsString>,
) -> Option<PathBuf> {
    if let Some(dir) = non_empty(vlm) {
        return Some(PathBuf::from(dir));
    }
    if let Some(xdg) = non_empty(xdg)
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
    {
        return Some(xdg.join("vlm"));
    }
    non_empty(home).map(|h| PathBuf::from(h).join(".cache").join("vlm"))
}

fn non_empty(v: Option<OsString>) -> Option<OsString> {
    v.filter(|s| !s.is_empty())
}

/// Lower-case hexadecimal digits of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    // Unix paths: "/x" is not absolute on Windows, where XDG_CACHE_HOME is not consulted anyway.
    #[cfg(unix)]
    #[test]
    fn dir_from_env_prefers_vlm_then_xdg_then_home() {
        let os = |s: &str| Some(OsString::from(s));
        assert_eq!(
            dir_from_env(os("/v"), os("/x"), os("/h")),
            Some(PathBuf::from("/v"))
        );
        assert_eq!(
            dir_from_env(os("rel/v"), None, None),
            Some(PathBuf::from("rel/v"))
        );
        assert_eq!(
            dir_from_env(None, os("/x"), os("/h")),
            Some(PathBuf::from("/x/vlm"))
        );
        assert_eq!(
            dir_from_env(os(""), os(""), os("/h")),
            Some(PathBuf::from("/h/.cache/vlm"))
        );
        // A relative XDG_CACHE_HOME is ignored, per the XDG spec.
        assert_eq!(
            dir_from_env(None, os("x"), os("/h")),
            Some(PathBuf::from("/h/.cache/vlm"))
        );
        assert_eq!(dir_from_env(None, None, None), None);
        assert_eq!(dir_from_env(os(""), None, os("")), None);
    }
}
