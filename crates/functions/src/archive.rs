//! Checks a function's `tar.gz` archive before anything of it is stored or unpacked: only relative
//! paths without `..`, regular files, directories and symlinks that stay inside the archive; bounded
//! in entries and unpacked bytes (decompression bombs stop at the bound, not after it). Finds the entry
//! point and whether `package.json` declares dependencies.

use std::collections::HashSet;
use std::io::Read;

/// Bounds of an archive.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Bytes the decompressed stream (headers and contents) may reach.
    pub max_unpacked: u64,
    pub max_entries: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self { max_unpacked: 256 * 1024 * 1024, max_entries: 20_000 }
    }
}

/// Why an archive was refused; each has a stable code.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ArchiveError {
    /// Not gzip, not tar, or cut short.
    #[error("not a valid tar.gz archive: {0}")]
    Malformed(String),
    /// A path is absolute, contains `..`, a NUL, or is too long.
    #[error("unsafe path in archive: {0}")]
    UnsafePath(String),
    /// A symlink points outside the archive (absolute or through `..` above its root).
    #[error("symlink {0} points outside the archive")]
    EscapingLink(String),
    /// A hard link, device, FIFO or other special entry.
    #[error("unsupported entry type in archive: {0}")]
    UnsupportedEntry(String),
    /// More unpacked bytes or entries than allowed.
    #[error("archive too large when unpacked ({0})")]
    TooLarge(String),
    /// No file to load: neither `package.json`'s `main` nor `index.mjs`/`index.js`/`index.cjs`.
    #[error("no entry point: add index.mjs, index.js or index.cjs, or name one in package.json \"main\"")]
    NoEntrypoint,
    /// `package.json` is not JSON.
    #[error("package.json is not valid JSON: {0}")]
    BadPackageJson(String),
}

impl ArchiveError {
    pub fn code(&self) -> &'static str {
        match self {
            Self::Malformed(_) => "invalid_archive",
            Self::UnsafePath(_) => "archive_unsafe_path",
            Self::EscapingLink(_) => "archive_escaping_link",
            Self::UnsupportedEntry(_) => "archive_unsupported_entry",
            Self::TooLarge(_) => "archive_too_large",
            Self::NoEntrypoint => "function_entrypoint_missing",
            Self::BadPackageJson(_) => "invalid_package_json",
        }
    }
}

/// What a checked archive holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    /// The file the runner loads, relative to the function's root.
    pub entrypoint: String,
    /// `package.json` declares dependencies (installed at deploy time).
    pub has_dependencies: bool,
    pub files: usize,
}

/// Counts what the decompressor yields and stops at the bound.
struct Bounded<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Read for Bounded<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.left == 0 {
            // One byte more than allowed means the bound is crossed.
            let mut probe = [0u8; 1];
            return match self.inner.read(&mut probe)? {
                0 => Ok(0),
                _ => Err(std::io::Error::other("unpacked size bound")),
            };
        }
        let cap = buf.len().min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..cap])?;
        self.left -= n as u64;
        Ok(n)
    }
}

/// Normalises an archive path: drops `.` components and a trailing `/`; refuses the rest.
fn clean_path(raw: &[u8]) -> Result<Vec<String>, ArchiveError> {
    let shown = || String::from_utf8_lossy(raw).into_owned();
    let text = std::str::from_utf8(raw).map_err(|_| ArchiveError::UnsafePath(shown()))?;
    if text.contains('\0') || text.starts_with('/') || text.len() > 1024 || text.contains('\\') {
        return Err(ArchiveError::UnsafePath(shown()));
    }
    let mut parts = Vec::new();
    for c in text.split('/') {
        match c {
            "" | "." => {}
            ".." => return Err(ArchiveError::UnsafePath(shown())),
            c if c.len() > 255 => return Err(ArchiveError::UnsafePath(shown())),
            c => parts.push(c.to_owned()),
        }
    }
    Ok(parts)
}

/// Whether a symlink at `at` (path components) pointing to `target` stays inside the root.
fn link_stays_inside(at: &[String], target: &[u8]) -> bool {
    let Ok(target) = std::str::from_utf8(target) else { return false };
    if target.is_empty() || target.starts_with('/') || target.contains('\0') {
        return false;
    }
    // The link resolves relative to its directory.
    let mut depth = at.len().saturating_sub(1) as i64;
    for c in target.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                depth -= 1;
                if depth < 0 {
                    return false;
                }
            }
            _ => depth += 1,
        }
    }
    true
}

/// What a checked archive holds, whatever it is for (a function or a container app).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tree {
    /// Paths of its files and symlinks.
    pub files: HashSet<String>,
    /// The root `package.json`, parsed.
    pub package_json: Option<serde_json::Value>,
}

impl Tree {
    /// `package.json` declares dependencies (installed at deploy time).
    pub fn has_dependencies(&self) -> bool {
        self.package_json
            .as_ref()
            .and_then(|p| p.get("dependencies"))
            .and_then(|d| d.as_object())
            .is_some_and(|d| !d.is_empty())
    }
}

/// Checks a function's archive without unpacking it anywhere, and finds its entry point.
pub fn check(archive: &[u8], limits: Limits) -> Result<Checked, ArchiveError> {
    let tree = check_tree(archive, limits)?;
    let has_dependencies = tree.has_dependencies();
    let (files, pkg) = (tree.files, tree.package_json);
    let main = pkg.as_ref().and_then(|p| p.get("main")).and_then(|m| m.as_str()).map(|m| {
        let parts = clean_path(m.as_bytes()).unwrap_or_default();
        parts.join("/")
    });
    let entrypoint = main
        .filter(|m| files.contains(m))
        .or_else(|| ["index.mjs", "index.js", "index.cjs"].into_iter().find(|f| files.contains(*f)).map(str::to_owned))
        .ok_or(ArchiveError::NoEntrypoint)?;
    Ok(Checked { entrypoint, has_dependencies, files: files.len() })
}

/// Checks an archive's entries (paths, links, types, bounds) without unpacking it anywhere.
pub fn check_tree(archive: &[u8], limits: Limits) -> Result<Tree, ArchiveError> {
    let gz = flate2::read::GzDecoder::new(archive);
    let mut tar = tar::Archive::new(Bounded { inner: gz, left: limits.max_unpacked });
    let malformed = |e: std::io::Error| {
        if e.to_string().contains("unpacked size bound") {
            ArchiveError::TooLarge(format!("over {} bytes", limits.max_unpacked))
        } else {
            ArchiveError::Malformed(e.to_string())
        }
    };
    let mut files: HashSet<String> = HashSet::new();
    let mut package_json: Option<Vec<u8>> = None;
    let mut entries = 0usize;
    for entry in tar.entries().map_err(malformed)? {
        let mut entry = entry.map_err(malformed)?;
        entries += 1;
        if entries > limits.max_entries {
            return Err(ArchiveError::TooLarge(format!("over {} entries", limits.max_entries)));
        }
        let raw = entry.path_bytes().into_owned();
        let parts = clean_path(&raw)?;
        let kind = entry.header().entry_type();
        let joined = parts.join("/");
        match kind {
            tar::EntryType::Directory => {}
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                if parts.is_empty() {
                    return Err(ArchiveError::UnsafePath(String::from_utf8_lossy(&raw).into_owned()));
                }
                if joined == "package.json" {
                    let mut buf = Vec::new();
                    (&mut entry).take(1024 * 1024 + 1).read_to_end(&mut buf).map_err(malformed)?;
                    package_json = Some(buf);
                }
                files.insert(joined);
            }
            tar::EntryType::Symlink => {
                let target = entry.link_name_bytes().map(|t| t.into_owned()).unwrap_or_default();
                if parts.is_empty() || !link_stays_inside(&parts, &target) {
                    return Err(ArchiveError::EscapingLink(joined));
                }
                files.insert(joined);
            }
            tar::EntryType::XGlobalHeader => {}
            other => return Err(ArchiveError::UnsupportedEntry(format!("{joined} ({other:?})"))),
        }
        // Reading the contents through the bounded stream is what enforces the size bound.
        std::io::copy(&mut entry, &mut std::io::sink()).map_err(malformed)?;
    }
    let pkg: Option<serde_json::Value> = match package_json {
        Some(bytes) => Some(serde_json::from_slice(&bytes).map_err(|e| ArchiveError::BadPackageJson(e.to_string()))?),
        None => None,
    };
    Ok(Tree { files, package_json: pkg })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    enum Item<'a> {
        File(&'a str, &'a [u8]),
        Link(&'a str, &'a str),
        Hard(&'a str, &'a str),
        Fifo(&'a str),
    }

    /// Builds a tar.gz byte by byte (raw names, so unsafe ones can be written).
    fn build(items: &[Item<'_>]) -> Vec<u8> {
        let mut out = Vec::new();
        for item in items {
            let (name, kind, data, link): (&str, u8, &[u8], &str) = match item {
                Item::File(n, d) => (n, b'0', d, ""),
                Item::Link(n, t) => (n, b'2', b"", t),
                Item::Hard(n, t) => (n, b'1', b"", t),
                Item::Fifo(n) => (n, b'6', b"", ""),
            };
            let mut h = [0u8; 512];
            h[..name.len()].copy_from_slice(name.as_bytes());
            h[100..108].copy_from_slice(b"0000644\0");
            h[108..116].copy_from_slice(b"0000000\0");
            h[116..124].copy_from_slice(b"0000000\0");
            h[124..136].copy_from_slice(format!("{:011o}\0", data.len()).as_bytes());
            h[136..148].copy_from_slice(b"00000000000\0");
            h[156] = kind;
            h[157..157 + link.len()].copy_from_slice(link.as_bytes());
            h[257..263].copy_from_slice(b"ustar\0");
            h[263..265].copy_from_slice(b"00");
            h[148..156].copy_from_slice(b"        ");
            let sum: u32 = h.iter().map(|b| u32::from(*b)).sum();
            h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
            out.extend_from_slice(&h);
            out.extend_from_slice(data);
            out.resize(out.len().div_ceil(512) * 512, 0);
        }
        out.resize(out.len() + 1024, 0);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &out).unwrap();
        gz.finish().unwrap()
    }

    #[test]
    fn a_plain_function_passes_and_names_its_entry_point() {
        let a = build(&[Item::File("./index.js", b"exports.main = async () => 1"), Item::Link("lib", "index.js")]);
        let c = check(&a, Limits::default()).unwrap();
        assert_eq!(c, Checked { entrypoint: "index.js".into(), has_dependencies: false, files: 2 });
        let a = build(&[
            Item::File("package.json", br#"{"main": "src/app.mjs", "dependencies": {"x": "1"}}"#),
            Item::File("src/app.mjs", b"export default () => new Response('x')"),
        ]);
        let c = check(&a, Limits::default()).unwrap();
        assert_eq!((c.entrypoint.as_str(), c.has_dependencies), ("src/app.mjs", true));
    }

    #[test]
    fn unsafe_archives_are_refused_with_their_code() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (build(&[Item::File("/etc/passwd", b"x"), Item::File("index.js", b"")]), "archive_unsafe_path"),
            (build(&[Item::File("a/../../x", b"x"), Item::File("index.js", b"")]), "archive_unsafe_path"),
            (build(&[Item::Link("evil", "/etc/shadow"), Item::File("index.js", b"")]), "archive_escaping_link"),
            (build(&[Item::Link("a/evil", "../../x"), Item::File("index.js", b"")]), "archive_escaping_link"),
            (build(&[Item::Hard("h", "index.js"), Item::File("index.js", b"")]), "archive_unsupported_entry"),
            (build(&[Item::Fifo("f"), Item::File("index.js", b"")]), "archive_unsupported_entry"),
            (build(&[Item::File("README", b"no code")]), "function_entrypoint_missing"),
            (build(&[Item::File("package.json", b"{"), Item::File("index.js", b"")]), "invalid_package_json"),
            (b"not gzip at all".to_vec(), "invalid_archive"),
        ];
        for (archive, code) in cases {
            assert_eq!(check(&archive, Limits::default()).map_err(|e| e.code()), Err(code));
        }
    }

    #[test]
    fn a_decompression_bomb_stops_at_the_bound() {
        let zeros = vec![0u8; 8 * 1024 * 1024];
        let a = build(&[Item::File("index.js", b""), Item::File("bomb", &zeros)]);
        assert!(a.len() < 64 * 1024, "compresses well: {}", a.len());
        let limits = Limits { max_unpacked: 1024 * 1024, max_entries: 10 };
        assert_eq!(check(&a, limits).map_err(|e| e.code()), Err("archive_too_large"));
        let many: Vec<Item<'_>> = (0..20).map(|_| Item::File("index.js", b"")).collect();
        assert_eq!(check(&build(&many), limits).map_err(|e| e.code()), Err("archive_too_large"));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
            let _ = check(&bytes, Limits::default());
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            std::io::Write::write_all(&mut gz, &bytes).unwrap();
            let _ = check(&gz.finish().unwrap(), Limits::default());
        }

        #[test]
        fn accepted_paths_never_leave_the_root(name in "[a-z./]{1,40}", target in "[a-z./]{1,40}") {
            let a = build(&[Item::File("index.js", b""), Item::Link(&name, &target)]);
            if check(&a, Limits::default()).is_ok() {
                let parts = clean_path(name.as_bytes()).unwrap();
                prop_assert!(!parts.iter().any(|p| p == ".."));
                prop_assert!(!target.starts_with('/'));
            }
        }
    }
}
