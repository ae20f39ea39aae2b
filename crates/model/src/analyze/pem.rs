//! Whether a gateway credential's certificate can be served, as Istio's `ValidateCertificate`
//! decides it (IST0161): the first PEM block decodes to one or more X.509 certificates, each
//! valid at the time of the analysis (not expired, not yet to come).
//!
//! Only the certificate's outer structure and validity are read: a minimal DER reader, since
//! the analyzers need nothing else of the certificate and the crate has no X.509 parser.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;

/// Why a certificate cannot be served; `None` when it can.
pub(super) fn certificate_problem(pem: &[u8]) -> Option<&'static str> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    certificate_problem_at(pem, now)
}

/// [`certificate_problem`] at `now` (seconds since 1970).
pub(super) fn certificate_problem_at(pem: &[u8], now: i64) -> Option<&'static str> {
    let Some(der) = first_pem_block(pem) else {
        return Some("pem decode failed");
    };
    let mut rest = der.as_slice();
    if rest.is_empty() {
        return Some("x509: malformed certificate");
    }
    while !rest.is_empty() {
        let Some(((not_before, not_after), tail)) = certificate_validity(rest) else {
            return Some("x509: malformed certificate");
        };
        if now > not_after || now < not_before {
            return Some("certificate is expired or not yet valid");
        }
        rest = tail;
    }
    None
}

/// The bytes of the first `-----BEGIN …-----` block (headers skipped), as Go's `pem.Decode`.
fn first_pem_block(text: &[u8]) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(text).ok()?;
    let start = text.find("-----BEGIN ")?;
    let after = &text[start + "-----BEGIN ".len()..];
    let label_end = after.find("-----")?;
    let label = &after[..label_end];
    let body = after[label_end + 5..].trim_start_matches(['\r', '\n']);
    let end = body.find(&format!("-----END {label}-----"))?;
    let mut b64 = String::new();
    for line in body[..end].lines() {
        if line.contains(':') {
            continue;
        }
        b64.extend(line.chars().filter(|c| !c.is_whitespace()));
    }
    base64::engine::general_purpose::STANDARD.decode(b64).ok()
}

/// One DER element: (tag, contents, the bytes after it).
fn element(der: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = der.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

const SEQUENCE: u8 = 0x30;
const INTEGER: u8 = 0x02;
const BIT_STRING: u8 = 0x03;
const UTC_TIME: u8 = 0x17;
const GENERALIZED_TIME: u8 = 0x18;
const VERSION: u8 = 0xa0;

type Validity = (i64, i64);

/// The validity (notBefore, notAfter) of the certificate at the start of `der`, and the bytes
/// after it; `None` when it is not shaped as a certificate.
fn certificate_validity(der: &[u8]) -> Option<(Validity, &[u8])> {
    let (tag, cert, after) = element(der)?;
    if tag != SEQUENCE {
        return None;
    }
    let (tag, tbs, rest) = element(cert)?;
    if tag != SEQUENCE {
        return None;
    }
    let (tag, _algorithm, rest) = element(rest)?;
    if tag != SEQUENCE {
        return None;
    }
    let (tag, _signature, rest) = element(rest)?;
    if tag != BIT_STRING || !rest.is_empty() {
        return None;
    }
    let (mut tag, mut field, mut rest) = element(tbs)?;
    if tag == VERSION {
        (tag, field, rest) = element(rest)?;
    }
    if tag != INTEGER || field.is_empty() {
        return None;
    }
    for _ in 0..2 {
        // signature algorithm, issuer
        let (tag, _, tail) = element(rest)?;
        if tag != SEQUENCE {
            return None;
        }
        rest = tail;
    }
    let (tag, validity, mut rest) = element(rest)?;
    if tag != SEQUENCE {
        return None;
    }
    let (t1, not_before, times) = element(validity)?;
    let (t2, not_after, times) = element(times)?;
    if !times.is_empty() {
        return None;
    }
    let not_before = time(t1, not_before)?;
    let not_after = time(t2, not_after)?;
    for _ in 0..2 {
        // subject, subjectPublicKeyInfo
        let (tag, _, tail) = element(rest)?;
        if tag != SEQUENCE {
            return None;
        }
        rest = tail;
    }
    Some(((not_before, not_after), after))
}

/// A UTCTime (`YYMMDDHHMMSSZ`, years 1950–2049) or GeneralizedTime (`YYYYMMDDHHMMSSZ`) as
/// seconds since 1970.
fn time(tag: u8, bytes: &[u8]) -> Option<i64> {
    let text = std::str::from_utf8(bytes).ok()?.strip_suffix('Z')?;
    if !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let num = |s: &str| s.parse::<i64>().ok();
    let (year, rest) = match (tag, text.len()) {
        (UTC_TIME, 12) => {
            let yy = num(&text[..2])?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, &text[2..])
        }
        (GENERALIZED_TIME, 14) => (num(&text[..4])?, &text[4..]),
        _ => return None,
    };
    let (month, day) = (num(&rest[..2])?, num(&rest[2..4])?);
    let (hour, minute, second) = (num(&rest[4..6])?, num(&rest[6..8])?, num(&rest[8..10])?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 {
        return None;
    }
    if second > 60 {
        return None;
    }
    Some(days_from_civil(year, month, day) * 86_400 + hour * 3_600 + minute * 60 + second)
}

/// Days from 1970-01-01 to the given date of the proleptic Gregorian calendar.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Self-signed, valid from 2000-01-01 to 2099-12-31 (GeneralizedTime for the end).
    const VALID: &str = "-----BEGIN CERTIFICATE-----
MIIBJjCBzaADAgECAgEBMAoGCCqGSM49BAMCMBwxGjAYBgNVBAMMEXZhbGlkLmV4
YW1wbGUuY29tMCAXDTAwMDEwMTAwMDAwMFoYDzIwOTkxMjMxMDAwMDAwWjAcMRow
GAYDVQQDDBF2YWxpZC5leGFtcGxlLmNvbTBZMBMGByqGSM49AgEGCCqGSM49AwEH
A0IABGvLhO5Y5/R9NY5pACA84q917ASo7Lufp7Iij+GA4iUibOlfj7BO3JE/NJVk
w694BLUAgxVOMU0bm8Wdr8gDZpkwCgYIKoZIzj0EAwIDSAAwRQIhANeW/bEAZGq4
pjQ0FxgkPPqNrax7MH0OxKNYFLw3IAxrAiAuabLX0Fyhs/OMmuaYRmJuL8cfYidH
OedsYepHRI7Y/A==
-----END CERTIFICATE-----
";

    const Y2000: i64 = 946_684_800;
    const Y2100: i64 = 4_102_444_800;

    #[test]
    fn dates_are_read_in_both_encodings() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 1, 1) * 86_400, Y2000);
        let der = first_pem_block(VALID.as_bytes()).expect("a PEM block");
        let ((from, to), rest) = certificate_validity(&der).expect("a certificate");
        assert!(rest.is_empty());
        assert_eq!(from, Y2000);
        assert_eq!(to, Y2100 - 86_400);
    }

    #[test]
    fn a_certificate_is_usable_only_between_its_dates() {
        assert_eq!(certificate_problem_at(VALID.as_bytes(), Y2000 + 10), None);
        assert_eq!(
            certificate_problem_at(VALID.as_bytes(), Y2000 - 10),
            Some("certificate is expired or not yet valid")
        );
        assert_eq!(
            certificate_problem_at(VALID.as_bytes(), Y2100),
            Some("certificate is expired or not yet valid")
        );
    }

    #[test]
    fn garbage_and_other_blocks_are_not_certificates() {
        assert_eq!(
            certificate_problem_at(b"hush hush hush\n", Y2000),
            Some("pem decode failed")
        );
        let key = "-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg\n-----END PRIVATE KEY-----\n";
        assert_eq!(
            certificate_problem_at(key.as_bytes(), Y2000),
            Some("x509: malformed certificate")
        );
        // A certificate cut short.
        let cut = VALID.replace("OedsYepHRI7Y/A==\n", "");
        assert!(certificate_problem_at(cut.as_bytes(), Y2000 + 10).is_some());
    }
}
