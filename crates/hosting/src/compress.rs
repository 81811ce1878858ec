//! Content types by extension, and the brotli and gzip variants made once at upload, so serving never
//! compresses.

use std::io::Write as _;

/// A representation of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Encoding {
    Identity,
    Brotli,
    Gzip,
}

impl Encoding {
    /// The object key suffix of this variant.
    pub fn suffix(self) -> &'static str {
        match self {
            Self::Identity => "",
            Self::Brotli => ".br",
            Self::Gzip => ".gz",
        }
    }

    /// The `Content-Encoding` token.
    pub fn token(self) -> &'static str {
        match self {
            Self::Identity => "identity",
            Self::Brotli => "br",
            Self::Gzip => "gzip",
        }
    }
}

/// Files smaller than this are not worth compressing.
const MIN_COMPRESS_BYTES: usize = 256;
/// Brotli quality at deploy time: close to the best ratio, a fraction of quality 11's time.
const BROTLI_QUALITY: u32 = 9;

/// The content type of a site path, by extension (`application/octet-stream` when unknown).
pub fn content_type(path: &str) -> &'static str {
    let name = path.rsplit('/').next().unwrap_or(path);
    let ext = name.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase()).unwrap_or_default();
    match ext.as_str() {
        "html" | "htm" => "text/html; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "js" | "mjs" | "cjs" => "text/javascript; charset=utf-8",
        "json" | "map" => "application/json",
        "webmanifest" => "application/manifest+json",
        "txt" => "text/plain; charset=utf-8",
        "md" => "text/markdown; charset=utf-8",
        "csv" => "text/csv; charset=utf-8",
        "xml" => "application/xml",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "avif" => "image/avif",
        "ico" => "image/x-icon",
        "bmp" => "image/bmp",
        "woff" => "font/woff",
        "woff2" => "font/woff2",
        "ttf" => "font/ttf",
        "otf" => "font/otf",
        "eot" => "application/vnd.ms-fontobject",
        "wasm" => "application/wasm",
        "pdf" => "application/pdf",
        "zip" => "application/zip",
        "gz" => "application/gzip",
        "mp4" => "video/mp4",
        "webm" => "video/webm",
        "mp3" => "audio/mpeg",
        "ogg" => "audio/ogg",
        "wav" => "audio/wav",
        "glb" => "model/gltf-binary",
        "gltf" => "model/gltf+json",
        _ => "application/octet-stream",
    }
}

/// Whether files of this type shrink when compressed (text, JSON, SVG, WebAssembly, some fonts).
pub fn compressible(content_type: &str) -> bool {
    content_type.starts_with("text/")
        || matches!(
            content_type,
            "application/json"
                | "application/manifest+json"
                | "application/xml"
                | "image/svg+xml"
                | "application/wasm"
                | "image/x-icon"
                | "image/bmp"
                | "font/ttf"
                | "font/otf"
                | "application/vnd.ms-fontobject"
                | "model/gltf+json"
        )
}

/// The brotli and gzip variants of `data` worth keeping (each at most 90% of the original size).
pub fn variants(data: &[u8]) -> Vec<(Encoding, Vec<u8>)> {
    if data.len() < MIN_COMPRESS_BYTES {
        return Vec::new();
    }
    let worth = |v: &Vec<u8>| v.len() * 10 <= data.len() * 9;
    let mut out = Vec::new();
    let mut br = Vec::new();
    let params = brotli::enc::BrotliEncoderParams {
        quality: BROTLI_QUALITY as i32,
        size_hint: data.len(),
        ..Default::default()
    };
    if brotli::BrotliCompress(&mut &data[..], &mut br, &params).is_ok() && worth(&br) {
        out.push((Encoding::Brotli, br));
    }
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    if gz.write_all(data).is_ok()
        && let Ok(gz) = gz.finish()
        && worth(&gz)
    {
        out.push((Encoding::Gzip, gz));
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::io::Read as _;

    use super::*;

    #[test]
    fn variants_decompress_to_the_original() {
        let data = "<p>hello hosting</p>\n".repeat(200).into_bytes();
        let v = variants(&data);
        assert_eq!(v.iter().map(|(e, _)| *e).collect::<Vec<_>>(), [Encoding::Brotli, Encoding::Gzip]);
        for (enc, bytes) in v {
            let mut back = Vec::new();
            match enc {
                Encoding::Brotli => brotli::BrotliDecompress(&mut &bytes[..], &mut back).unwrap(),
                Encoding::Gzip => drop(flate2::read::GzDecoder::new(&bytes[..]).read_to_end(&mut back).unwrap()),
                Encoding::Identity => unreachable!(),
            }
            assert_eq!(back, data);
        }
        assert!(variants(b"tiny").is_empty());
    }

    #[test]
    fn content_types() {
        assert_eq!(content_type("index.html"), "text/html; charset=utf-8");
        assert_eq!(content_type("assets/App.3f9a.JS"), "text/javascript; charset=utf-8");
        assert_eq!(content_type("a/b"), "application/octet-stream");
        assert_eq!(content_type(".well-known/x.json"), "application/json");
        assert!(compressible(content_type("x.svg")) && !compressible(content_type("x.png")));
    }
}
