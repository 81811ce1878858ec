//! The two DNS messages the TXT ownership check needs (RFC 1035): one TXT question, and the parsing of
//! its answer. The answer is untrusted input: every length is bounds-checked, compression pointers are
//! followed only backwards and a bounded number of times.

/// Why an answer was not usable.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum AnswerError {
    /// A datagram answering another question (not ours): ignore it and wait.
    #[error("answer to another query")]
    OtherId,
    #[error("the name does not exist")]
    NoSuchName,
    #[error("server error code {0}")]
    ServerError(u8),
    #[error("answer truncated")]
    Truncated,
    #[error("malformed answer")]
    Malformed,
}

const TYPE_TXT: u16 = 16;
const CLASS_IN: u16 = 1;

/// A recursive query for the TXT records of `name`.
pub fn txt_query(id: u16, name: &str) -> Result<Vec<u8>, &'static str> {
    let mut msg = Vec::with_capacity(32 + name.len());
    msg.extend_from_slice(&id.to_be_bytes());
    // Flags: recursion desired; one question.
    msg.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    let name = name.trim_end_matches('.');
    if name.len() > 253 {
        return Err("name too long");
    }
    for label in name.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err("bad label");
        }
        msg.push(label.len() as u8);
        msg.extend_from_slice(label.as_bytes());
    }
    msg.push(0);
    msg.extend_from_slice(&TYPE_TXT.to_be_bytes());
    msg.extend_from_slice(&CLASS_IN.to_be_bytes());
    Ok(msg)
}

struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], AnswerError> {
        let end = self.at.checked_add(n).ok_or(AnswerError::Malformed)?;
        let s = self.buf.get(self.at..end).ok_or(AnswerError::Malformed)?;
        self.at = end;
        Ok(s)
    }

    fn u16(&mut self) -> Result<u16, AnswerError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    /// Skips a (possibly compressed) name.
    fn skip_name(&mut self) -> Result<(), AnswerError> {
        loop {
            let len = *self.take(1)?.first().ok_or(AnswerError::Malformed)?;
            match len {
                0 => return Ok(()),
                // A pointer ends the name where it stands.
                l if l & 0xC0 == 0xC0 => {
                    self.take(1)?;
                    return Ok(());
                }
                l if l & 0xC0 != 0 => return Err(AnswerError::Malformed),
                l => {
                    self.take(usize::from(l))?;
                }
            }
        }
    }
}

/// The TXT records (each record's character-strings joined) of an answer to query `id`.
pub fn parse_txt_answer(id: u16, msg: &[u8]) -> Result<Vec<String>, AnswerError> {
    let mut r = Reader { buf: msg, at: 0 };
    if r.u16()? != id {
        return Err(AnswerError::OtherId);
    }
    let flags = r.u16()?;
    if flags & 0x8000 == 0 {
        return Err(AnswerError::OtherId);
    }
    if flags & 0x0200 != 0 {
        return Err(AnswerError::Truncated);
    }
    match (flags & 0x000F) as u8 {
        0 => {}
        3 => return Err(AnswerError::NoSuchName),
        code => return Err(AnswerError::ServerError(code)),
    }
    let questions = r.u16()?;
    let answers = r.u16()?;
    r.take(4)?;
    for _ in 0..questions {
        r.skip_name()?;
        r.take(4)?;
    }
    let mut out = Vec::new();
    for _ in 0..answers {
        r.skip_name()?;
        let kind = r.u16()?;
        let class = r.u16()?;
        r.take(4)?;
        let len = usize::from(r.u16()?);
        let data = r.take(len)?;
        if kind != TYPE_TXT || class != CLASS_IN {
            // CNAMEs on the way to the TXT record, and the like.
            continue;
        }
        let mut text = Vec::new();
        let mut d = Reader { buf: data, at: 0 };
        while d.at < data.len() {
            let n = usize::from(*d.take(1)?.first().ok_or(AnswerError::Malformed)?);
            text.extend_from_slice(d.take(n)?);
        }
        out.push(String::from_utf8_lossy(&text).into_owned());
    }
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// An answer to `query` holding the given TXT records, with the answer names compressed.
    fn answer(query: &[u8], records: &[&[&str]], rcode: u8) -> Vec<u8> {
        let mut m = query.to_vec();
        m[2] = 0x81;
        m[3] = 0x80 | rcode;
        m[6..8].copy_from_slice(&(records.len() as u16).to_be_bytes());
        for strings in records {
            m.extend_from_slice(&[0xC0, 12, 0, 16, 0, 1, 0, 0, 0, 60]);
            let data: Vec<u8> = strings.iter().flat_map(|s| std::iter::once(s.len() as u8).chain(s.bytes())).collect();
            m.extend_from_slice(&(data.len() as u16).to_be_bytes());
            m.extend_from_slice(&data);
        }
        m
    }

    #[test]
    fn a_txt_answer_round_trips() {
        let q = txt_query(0xBEEF, "_vibebase-challenge.example.com").unwrap();
        let a = answer(&q, &[&["vb-verify-", "abc"], &["other"]], 0);
        assert_eq!(parse_txt_answer(0xBEEF, &a).unwrap(), ["vb-verify-abc", "other"]);
        assert_eq!(parse_txt_answer(0xBEEE, &a), Err(AnswerError::OtherId));
        assert_eq!(parse_txt_answer(0xBEEF, &answer(&q, &[], 3)), Err(AnswerError::NoSuchName));
        assert_eq!(parse_txt_answer(0xBEEF, &answer(&q, &[], 2)), Err(AnswerError::ServerError(2)));
        assert_eq!(parse_txt_answer(0xBEEF, &q), Err(AnswerError::OtherId), "a query is not an answer");
        assert_eq!(parse_txt_answer(0xBEEF, &a[..a.len() - 2]), Err(AnswerError::Malformed));
        assert!(txt_query(1, "a..b").is_err());
    }

    proptest::proptest! {
        /// Answers are untrusted: parsing arbitrary bytes never panics.
        #[test]
        fn parsing_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
            let _ = parse_txt_answer(u16::from_be_bytes([bytes.first().copied().unwrap_or(0), bytes.get(1).copied().unwrap_or(0)]), &bytes);
        }
    }
}
