//! Site paths: the one check every path of a manifest, an archive entry and a request goes through.

/// Longest site path (bytes).
pub const MAX_PATH_BYTES: usize = 1024;

/// Why a path is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathProblem {
    /// Empty, too long, absolute, a `.`/`..`/empty segment, a backslash or a control character.
    Unsafe,
    /// A segment starting with `.` (`.env`, `.git/…`); only `.well-known` is allowed.
    Dotfile,
}

/// Checks a site-relative path (`index.html`, `assets/app.js`): no leading `/`, no empty, `.` or `..`
/// segments, no backslashes or control characters, no dotfiles except under `.well-known/`.
pub fn check(path: &str) -> Result<(), PathProblem> {
    if path.is_empty()
        || path.len() > MAX_PATH_BYTES
        || path.starts_with('/')
        || path.chars().any(|c| c.is_control() || c == '\\')
    {
        return Err(PathProblem::Unsafe);
    }
    for segment in path.split('/') {
        if segment.is_empty() || segment == "." || segment == ".." {
            return Err(PathProblem::Unsafe);
        }
        if segment.starts_with('.') && segment != ".well-known" {
            return Err(PathProblem::Dotfile);
        }
    }
    Ok(())
}

/// Deployment ids: `dpl` and 10 lowercase letters or digits. Container app names may not take this
/// shape, which keeps `<x>--<env>` host labels unambiguous.
pub fn is_deployment_id(label: &str) -> bool {
    label.len() == 13
        && label.starts_with("dpl")
        && label[3..].bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

/// Whether `s` is a lowercase hex SHA-256.
pub fn is_sha256(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn safe_and_unsafe_paths() {
        for ok in ["index.html", "assets/app.3f9a1c2b.js", ".well-known/security.txt", "a b/c%20d.txt", "é.html"] {
            assert_eq!(check(ok), Ok(()), "{ok}");
        }
        for bad in ["", "/etc/passwd", "../x", "a/../b", "a//b", "./a", "a/.", "a\\b", "a\0b", "a\nb", "x/"] {
            assert_eq!(check(bad), Err(PathProblem::Unsafe), "{bad:?}");
        }
        for dot in [".env", ".git/config", "a/.htaccess", ".well-known/.x"] {
            assert_eq!(check(dot), Err(PathProblem::Dotfile), "{dot}");
        }
    }

    proptest::proptest! {
        /// Whatever a path is, an accepted one never climbs out or names a dotfile.
        #[test]
        fn accepted_paths_stay_inside(p in "\\PC{0,40}") {
            if check(&p).is_ok() {
                proptest::prop_assert!(!p.starts_with('/'));
                proptest::prop_assert!(p.split('/').all(|s| s != ".." && s != "." && !s.is_empty()));
                proptest::prop_assert!(p.split('/').all(|s| !s.starts_with('.') || s == ".well-known"));
            }
        }
    }
}
