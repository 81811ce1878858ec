//! The object store behind every env's files: local filesystem, or S3 in the scale-out run.

use bytes::Bytes;

use crate::harness::Harness;

#[tokio::test]
async fn objects_round_trip_list_by_prefix_and_delete_by_prefix() {
    let h = Harness::new().await;
    let b = h.platform.blobs();
    b.put("envs/a/one.txt", Bytes::from_static(b"1")).await.unwrap();
    b.put("envs/a/dir/two.txt", Bytes::from_static(b"22")).await.unwrap();
    b.put("envs/ab/three.txt", Bytes::from_static(b"333")).await.unwrap();
    assert_eq!(b.get("envs/a/dir/two.txt").await.unwrap().as_deref(), Some(&b"22"[..]));
    assert_eq!(b.get("envs/a/none").await.unwrap(), None);
    // Prefixes are path segments: `envs/a` never lists `envs/ab`.
    assert_eq!(b.list("envs/a/").await.unwrap(), ["envs/a/dir/two.txt", "envs/a/one.txt"]);
    // Overwrites replace the whole object.
    b.put("envs/a/one.txt", Bytes::from(vec![7u8; 100_000])).await.unwrap();
    assert_eq!(b.get("envs/a/one.txt").await.unwrap().unwrap().len(), 100_000);
    assert_eq!(b.delete_prefix("envs/a/").await.unwrap(), 2);
    assert!(b.list("envs/a/").await.unwrap().is_empty());
    assert_eq!(b.list("envs/ab/").await.unwrap(), ["envs/ab/three.txt"]);
}

#[tokio::test]
async fn object_keys_cannot_escape_their_prefix() {
    let h = Harness::new().await;
    let b = h.platform.blobs();
    for bad in ["", "/etc/passwd", "envs/a/../b/x", "envs/./a", "envs//a"] {
        assert!(b.put(bad, Bytes::from_static(b"x")).await.is_err(), "{bad:?}");
    }
}

fn chunks(
    total: usize,
    chunk: usize,
    fail_at: Option<usize>,
) -> impl futures_util::Stream<Item = Result<Bytes, String>> + Unpin {
    let mut sent = 0usize;
    futures_util::stream::iter(std::iter::from_fn(move || {
        if sent >= total {
            return None;
        }
        if fail_at.is_some_and(|f| sent >= f) {
            sent = total;
            return Some(Err("client went away".to_owned()));
        }
        let n = chunk.min(total - sent);
        let part: Vec<u8> = (sent..sent + n).map(|i| (i % 251) as u8).collect();
        sent += n;
        Some(Ok(Bytes::from(part)))
    }))
}

/// Streamed writes (one request, or multipart above 8 MiB), ranged reads, head, copy, delete; a write
/// that grows past its limit or whose source fails leaves nothing, not even a part.
#[tokio::test]
async fn streamed_writes_are_whole_or_absent() {
    use futures_util::TryStreamExt as _;
    let h = Harness::new().await;
    let b = h.platform.blobs();
    let big = 9 * 1024 * 1024 + 17;
    let w = b.put_stream("envs/s/big", chunks(big, 1 << 20, None), u64::MAX).await.unwrap();
    assert_eq!(w.size, big as u64);
    let meta = b.head("envs/s/big").await.unwrap().unwrap();
    assert_eq!(meta.size, big as u64);
    // A range across the first part's end.
    let start = 8 * 1024 * 1024 - 3;
    let read = b.get_stream("envs/s/big", Some((start as u64, Some(start as u64 + 6)))).await.unwrap().unwrap();
    assert_eq!((read.size, read.range.clone()), (big as u64, start as u64..start as u64 + 6));
    let got: Vec<Bytes> = read.stream.try_collect().await.unwrap();
    let want: Vec<u8> = (start..start + 6).map(|i| (i % 251) as u8).collect();
    assert_eq!(got.concat(), want);
    let tail = b.get_stream("envs/s/big", Some((big as u64 - 2, None))).await.unwrap().unwrap();
    assert_eq!(tail.stream.try_collect::<Vec<Bytes>>().await.unwrap().concat().len(), 2);
    b.copy("envs/s/big", "envs/s/copy").await.unwrap();
    assert_eq!(b.head("envs/s/copy").await.unwrap().unwrap().size, big as u64);
    b.delete("envs/s/copy").await.unwrap();
    b.delete("envs/s/copy").await.unwrap();
    assert!(b.head("envs/s/copy").await.unwrap().is_none());
    assert!(b.get_stream("envs/s/none", None).await.unwrap().is_none());

    // Too large (small and multipart) and failing sources: nothing under their keys.
    let small = b.put_stream("envs/t/small", chunks(1000, 100, None), 999).await;
    assert!(matches!(small, Err(store::BlobError::TooLarge(999))), "{small:?}");
    let multi = b.put_stream("envs/t/multi", chunks(big, 1 << 20, None), 8 * 1024 * 1024 + 5).await;
    assert!(matches!(multi, Err(store::BlobError::TooLarge(_))), "{multi:?}");
    let failed = b.put_stream("envs/t/failed", chunks(big, 1 << 20, Some(9 * 1024 * 1024)), u64::MAX).await;
    assert!(matches!(failed, Err(store::BlobError::Body(_))), "{failed:?}");
    assert!(b.list("envs/t/").await.unwrap().is_empty(), "{:?}", b.list("envs/t/").await);
    // A failed overwrite keeps the old object.
    let over = b.put_stream("envs/s/big", chunks(big, 1 << 20, Some(9 * 1024 * 1024)), u64::MAX).await;
    assert!(over.is_err());
    assert_eq!(b.head("envs/s/big").await.unwrap().unwrap().size, big as u64);
}
