//! Deploy archives (`tar.gz`, or plain `tar`) read into memory with every limit checked while reading:
//! only regular files and directories are accepted (a symlink, hard link or device refuses the whole
//! archive), every name passes [`crate::path::check`] after a leading `./` is dropped (absolute names and
//! `..` refuse the archive; dotfiles such as `.env` or `.git/…` are left out), and the unpacked total,
//! each file and the file count are capped, so a decompression bomb stops at the cap.

use std::io::Read;

use bytes::Bytes;
use protocol::hosting::{MAX_ARCHIVE_UNPACKED_BYTES, MAX_DEPLOYMENT_FILES, MAX_SITE_FILE_BYTES};

use crate::path::{self, PathProblem};
use crate::{HostingError, Result};

/// What an archive unpacked to.
#[derive(Debug, Default)]
pub struct Unpacked {
    pub files: Vec<(String, Bytes)>,
    /// Dotfiles left out.
    pub skipped: Vec<String>,
}

/// The limits of one unpack (the protocol's by default; tests lower them).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub total_bytes: u64,
    pub file_bytes: u64,
    pub files: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            total_bytes: MAX_ARCHIVE_UNPACKED_BYTES,
            file_bytes: MAX_SITE_FILE_BYTES as u64,
            files: MAX_DEPLOYMENT_FILES,
        }
    }
}

/// A reader that fails once more than `left` bytes came through (the decompressed stream).
struct Capped<R> {
    inner: R,
    left: u64,
    exceeded: bool,
}

impl<R: Read> Read for Capped<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        match self.left.checked_sub(n as u64) {
            Some(left) => {
                self.left = left;
                Ok(n)
            }
            None => {
                self.exceeded = true;
                Err(std::io::Error::other("archive too large"))
            }
        }
    }
}

fn unsafe_entry(name: &str, why: &str) -> HostingError {
    HostingError::invalid("unsafe_archive_entry", format!("{name:?}: {why}"))
}

fn too_large(limits: &Limits) -> HostingError {
    HostingError::too_large(
        "archive_too_large",
        format!("archives unpack to at most {} bytes and {} files", limits.total_bytes, limits.files),
    )
}

/// Reads an archive. Synchronous and CPU-bound: call it on a blocking thread.
pub fn unpack(data: &[u8], limits: Limits) -> Result<Unpacked> {
    let gzip = data.starts_with(&[0x1f, 0x8b]);
    let inner: Box<dyn Read + '_> = if gzip { Box::new(flate2::read::GzDecoder::new(data)) } else { Box::new(data) };
    // Headers and padding count too: the cap is on everything decompressed, plus room for tar framing.
    let mut capped = Capped { inner, left: limits.total_bytes.saturating_add(1024 * 1024), exceeded: false };
    let result = read_entries(&mut capped, limits);
    if capped.exceeded {
        return Err(too_large(&limits));
    }
    result
}

fn read_entries<R: Read>(reader: &mut R, limits: Limits) -> Result<Unpacked> {
    let bad_archive =
        |e: std::io::Error| HostingError::invalid("invalid_archive", format!("not a readable tar(.gz) archive: {e}"));
    let mut archive = tar::Archive::new(reader);
    let mut out = Unpacked::default();
    let mut total: u64 = 0;
    let mut seen = std::collections::HashSet::new();
    for entry in archive.entries().map_err(bad_archive)? {
        let mut entry = entry.map_err(bad_archive)?;
        let raw = entry.path_bytes();
        let name = String::from_utf8(raw.to_vec()).map_err(|_| unsafe_entry("?", "names must be UTF-8"))?;
        let kind = entry.header().entry_type();
        let trimmed = name.strip_prefix("./").unwrap_or(&name);
        if name.starts_with('/') {
            return Err(unsafe_entry(&name, "absolute paths are refused"));
        }
        if kind.is_dir() {
            if trimmed.is_empty() || trimmed == "." {
                continue;
            }
            match path::check(trimmed.trim_end_matches('/')) {
                Ok(()) | Err(PathProblem::Dotfile) => continue,
                Err(PathProblem::Unsafe) => return Err(unsafe_entry(&name, "unsafe path")),
            }
        }
        if kind.is_pax_global_extensions() || kind.is_pax_local_extensions() || kind.is_gnu_longname() {
            continue;
        }
        if !kind.is_file() {
            return Err(unsafe_entry(
                &name,
                "only regular files and directories may be deployed (no links or devices)",
            ));
        }
        match path::check(trimmed) {
            Ok(()) => {}
            Err(PathProblem::Dotfile) => {
                out.skipped.push(trimmed.to_owned());
                continue;
            }
            Err(PathProblem::Unsafe) => {
                return Err(unsafe_entry(&name, "unsafe path (absolute, `..` or empty segments)"));
            }
        }
        let size = entry.header().size().map_err(bad_archive)?;
        if size > limits.file_bytes {
            return Err(HostingError::too_large(
                "file_too_large",
                format!("{trimmed:?} is over {} bytes", limits.file_bytes),
            ));
        }
        total = total.saturating_add(size);
        if total > limits.total_bytes || out.files.len() >= limits.files {
            return Err(too_large(&limits));
        }
        if !seen.insert(trimmed.to_owned()) {
            return Err(unsafe_entry(trimmed, "appears twice"));
        }
        let mut buf = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
        entry.read_to_end(&mut buf).map_err(bad_archive)?;
        out.files.push((trimmed.to_owned(), Bytes::from(buf)));
    }
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) mod tests {
    use std::io::Write as _;

    use super::*;

    /// A tar with raw headers, so tests can write names and types the `tar` builder would refuse.
    pub fn raw_tar(entries: &[(&str, u8, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        for (name, kind, data) in entries {
            let mut h = [0u8; 512];
            h[..name.len()].copy_from_slice(name.as_bytes());
            h[100..107].copy_from_slice(b"0000644");
            h[108..115].copy_from_slice(b"0000000");
            h[116..123].copy_from_slice(b"0000000");
            h[124..135].copy_from_slice(format!("{:011o}", data.len()).as_bytes());
            h[136..147].copy_from_slice(b"00000000000");
            h[156] = *kind;
            if *kind == b'2' {
                h[157..163].copy_from_slice(b"target");
            }
            h[257..263].copy_from_slice(b"ustar\0");
            h[263..265].copy_from_slice(b"00");
            h[148..156].copy_from_slice(b"        ");
            let sum: u32 = h.iter().map(|b| u32::from(*b)).sum();
            h[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
            out.extend_from_slice(&h);
            out.extend_from_slice(data);
            out.resize(out.len().div_ceil(512) * 512, 0);
        }
        out.resize(out.len() + 1024, 0);
        out
    }

    pub fn gzip(data: &[u8]) -> Vec<u8> {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(data).unwrap();
        gz.finish().unwrap()
    }

    #[test]
    fn regular_archives_unpack_and_dotfiles_are_left_out() {
        let tar = raw_tar(&[
            ("./", b'5', b""),
            ("./index.html", b'0', b"<h1>hi</h1>"),
            ("./assets/", b'5', b""),
            ("./assets/app.js", b'0', b"console.log(1)"),
            ("./.env", b'0', b"SECRET=1"),
            ("./.git/config", b'0', b"[core]"),
        ]);
        for data in [tar.clone(), gzip(&tar)] {
            let u = unpack(&data, Limits::default()).unwrap();
            let names: Vec<&str> = u.files.iter().map(|(n, _)| n.as_str()).collect();
            assert_eq!(names, ["index.html", "assets/app.js"]);
            assert_eq!(u.skipped, [".env", ".git/config"]);
        }
    }

    #[test]
    fn unsafe_archives_are_refused_whole() {
        for (name, kind) in [
            ("/etc/passwd", b'0'),
            ("../escape", b'0'),
            ("a/../../b", b'0'),
            ("link", b'2'),
            ("hard", b'1'),
            ("dev", b'3'),
        ] {
            let tar = raw_tar(&[("index.html", b'0', b"ok"), (name, kind, b"")]);
            let e = unpack(&gzip(&tar), Limits::default()).unwrap_err();
            assert!(matches!(e, HostingError::Invalid { code: "unsafe_archive_entry", .. }), "{name}: {e}");
        }
        let e =
            unpack(b"definitely not an archive, just some text that is long enough", Limits::default()).unwrap_err();
        assert!(matches!(e, HostingError::Invalid { code: "invalid_archive" | "unsafe_archive_entry", .. }), "{e}");
    }

    #[test]
    fn decompression_bombs_stop_at_the_cap() {
        // 64 MiB of zeros in one file compresses to ~64 KiB; the cap is 1 MiB.
        let zeros = vec![0u8; 64 * 1024 * 1024];
        let bomb = gzip(&raw_tar(&[("big.bin", b'0', &zeros)]));
        assert!(bomb.len() < 1024 * 1024);
        let limits = Limits { total_bytes: 1024 * 1024, file_bytes: 2 * 1024 * 1024, files: 10 };
        let e = unpack(&bomb, limits).unwrap_err();
        assert!(matches!(e, HostingError::TooLarge { .. }), "{e}");
        // Many small files: the count cap.
        let many: Vec<(String, u8, &[u8])> = (0..20).map(|i| (format!("f{i}.txt"), b'0', &b"x"[..])).collect();
        let refs: Vec<(&str, u8, &[u8])> = many.iter().map(|(n, k, d)| (n.as_str(), *k, *d)).collect();
        let e = unpack(&gzip(&raw_tar(&refs)), limits).unwrap_err();
        assert!(matches!(e, HostingError::TooLarge { code: "archive_too_large", .. }), "{e}");
    }
}
