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
