//! Just enough DER (X.690) to read a certificate's expiry: Certificate → TBSCertificate → Validity →
//! notAfter. The certificate comes from the ACME CA, but is read defensively anyway: every length is
//! bounds-checked.

/// One TLV: (tag, contents, rest).
fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7F);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n].iter().fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

const SEQUENCE: u8 = 0x30;
const UTC_TIME: u8 = 0x17;
const GENERALIZED_TIME: u8 = 0x18;

/// The certificate's `notAfter` as Unix milliseconds.
pub fn certificate_not_after(cert: &[u8]) -> Option<i64> {
    let (SEQUENCE, certificate, _) = tlv(cert)? else { return None };
    let (SEQUENCE, tbs, _) = tlv(certificate)? else { return None };
    let mut rest = tbs;
    // Optional [0] version.
    if rest.first() == Some(&0xA0) {
        rest = tlv(rest)?.2;
    }
    // serialNumber, signature, issuer.
    for _ in 0..3 {
        rest = tlv(rest)?.2;
    }
    let (SEQUENCE, validity, _) = tlv(rest)? else { return None };
    let (_, _, after) = tlv(validity)?;
    let (tag, text, _) = tlv(after)?;
    parse_time(tag, std::str::from_utf8(text).ok()?)
}

fn parse_time(tag: u8, text: &str) -> Option<i64> {
    let text = text.strip_suffix('Z')?;
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit()).then_some(());
    digits(text)?;
    let (year, rest) = match tag {
        // Two-digit years: 50–99 are 19xx (RFC 5280).
        UTC_TIME if text.len() == 12 => {
            let yy: i32 = text[..2].parse().ok()?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, &text[2..])
        }
        GENERALIZED_TIME if text.len() == 14 => (text[..4].parse().ok()?, &text[4..]),
        _ => return None,
    };
    let n = |i: usize| rest[i..i + 2].parse::<u8>().ok();
    let month = time::Month::try_from(n(0)?).ok()?;
    let date = time::Date::from_calendar_date(year, month, n(2)?).ok()?;
    let t = date.with_hms(n(4)?, n(6)?, n(8)?).ok()?.assume_utc();
    Some(t.unix_timestamp() * 1000)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn times_of_both_forms_parse() {
        assert_eq!(parse_time(UTC_TIME, "300101000000Z"), Some(1_893_456_000_000));
        assert_eq!(parse_time(GENERALIZED_TIME, "20300101000000Z"), Some(1_893_456_000_000));
        assert_eq!(parse_time(UTC_TIME, "990101000000Z"), Some(915_148_800_000));
        assert_eq!(parse_time(UTC_TIME, "3001010000Z"), None);
        assert_eq!(parse_time(UTC_TIME, "301301000000Z"), None);
    }

    proptest::proptest! {
        /// Garbage never panics.
        #[test]
        fn any_bytes_are_safe(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)) {
            let _ = certificate_not_after(&bytes);
        }
    }
}
