//! The SSE parser on the forms providers and proxies send, and on arbitrary chunking.

use gateway::sse::{SseEvent, SseParser, frame};
use proptest::prelude::*;

fn all(chunks: &[&[u8]]) -> Vec<SseEvent> {
    let mut p = SseParser::default();
    chunks.iter().flat_map(|c| p.push(c).unwrap()).collect()
}

#[test]
fn fields_comments_crlf_and_multiline_data() {
    let text = b": keep-alive\r\nevent: ping\r\ndata: {\"type\":\"ping\"}\r\n\r\ndata: a\ndata: b\n\nretry: 10\nid: 7\ndata:no-space\n\n";
    let events = all(&[text]);
    assert_eq!(
        events,
        vec![
            SseEvent { event: Some("ping".into()), data: "{\"type\":\"ping\"}".into() },
            SseEvent { event: None, data: "a\nb".into() },
            SseEvent { event: None, data: "no-space".into() },
        ]
    );
}

#[test]
fn comment_only_blocks_and_empty_lines_yield_nothing() {
    assert!(all(&[b": ping\n\n\n\n: another\n\n"]).is_empty());
}

#[test]
fn a_cut_event_is_reported_as_partial() {
    let mut p = SseParser::default();
    assert!(p.push(b"data: {\"a\":").unwrap().is_empty());
    assert!(p.has_partial());
    let mut p = SseParser::default();
    assert_eq!(p.push(b"data: x\n").unwrap(), vec![]);
    assert!(p.has_partial(), "data without the blank line that ends the event");
}

#[test]
fn invalid_utf8_is_an_error() {
    let mut p = SseParser::default();
    assert!(p.push(b"data: \xff\xfe\n\n").is_err());
}

proptest! {
    /// However the bytes are split into chunks, the same events come out; and what `frame` writes,
    /// the parser reads back.
    #[test]
    fn chunking_does_not_change_the_events(
        datas in proptest::collection::vec("[a-z{}\":, \n]{0,40}", 1..8),
        cuts in proptest::collection::vec(0usize..400, 0..10),
    ) {
        let mut wire = Vec::new();
        for (i, d) in datas.iter().enumerate() {
            wire.extend_from_slice(&frame(if i % 2 == 0 { Some("message") } else { None }, d));
        }
        let whole = all(&[&wire]);
        prop_assert_eq!(whole.len(), datas.len());
        for (e, d) in whole.iter().zip(&datas) {
            prop_assert_eq!(&e.data, d);
        }
        let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(wire.len())).collect();
        cuts.sort_unstable();
        let mut chunks = Vec::new();
        let mut last = 0;
        for c in cuts {
            chunks.push(&wire[last..c]);
            last = c;
        }
        chunks.push(&wire[last..]);
        prop_assert_eq!(all(&chunks), whole);
    }
}
