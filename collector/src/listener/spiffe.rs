//! Reads the SPIFFE ID (the URI subject alternative name) out of a client certificate.
//!
//! The certificate has already been verified against the configured CA when this runs, but
//! the reader is still written for hostile bytes: every length is checked, nothing indexes or
//! slices past the input, and anything unexpected yields `None` (no identity).

/// OID 2.5.29.17, subjectAltName, as DER content bytes.
const SUBJECT_ALT_NAME: &[u8] = &[0x55, 0x1D, 0x11];
const SEQUENCE: u8 = 0x30;
const OID: u8 = 0x06;
const BOOLEAN: u8 = 0x01;
const OCTET_STRING: u8 = 0x04;
/// `[3] EXPLICIT Extensions` in TBSCertificate.
const EXTENSIONS: u8 = 0xA3;
/// `uniformResourceIdentifier [6] IMPLICIT IA5String` in GeneralName.
const URI_NAME: u8 = 0x86;

/// The certificate's SPIFFE ID: its one `spiffe://` URI SAN. A certificate with none, or with
/// more than one (SPIFFE allows exactly one), has no identity.
pub fn spiffe_id(cert_der: &[u8]) -> Option<String> {
    let mut found = None;
    for uri in uri_sans(cert_der)? {
        if uri.starts_with("spiffe://") {
            if found.is_some() {
                return None;
            }
            found = Some(uri);
        }
    }
    found.map(str::to_string)
}

/// Every URI SAN of a DER certificate, or `None` when the DER is malformed.
pub fn uri_sans(cert_der: &[u8]) -> Option<Vec<&str>> {
    let (cert, _) = expect(cert_der, SEQUENCE)?;
    let (tbs, _) = expect(cert, SEQUENCE)?;
    let mut rest = tbs;
    let mut uris = Vec::new();
    while !rest.is_empty() {
        let (tag, value, next) = tlv(rest)?;
        rest = next;
        if tag != EXTENSIONS {
            continue;
        }
        let (extensions, _) = expect(value, SEQUENCE)?;
        let mut exts = extensions;
        while !exts.is_empty() {
            let (ext, next) = expect(exts, SEQUENCE)?;
            exts = next;
            let (oid, after_oid) = expect(ext, OID)?;
            if oid != SUBJECT_ALT_NAME {
                continue;
            }
            let (tag, mut value, after) = tlv(after_oid)?;
            if tag == BOOLEAN {
                (value, _) = expect(after, OCTET_STRING)?;
            } else if tag != OCTET_STRING {
                return None;
            }
            let (names, _) = expect(value, SEQUENCE)?;
            let mut names = names;
            while !names.is_empty() {
                let (tag, name, next) = tlv(names)?;
                names = next;
                if tag == URI_NAME {
                    uris.push(std::str::from_utf8(name).ok().filter(|s| s.is_ascii())?);
                }
            }
        }
    }
    Some(uris)
}

fn expect(input: &[u8], want: u8) -> Option<(&[u8], &[u8])> {
    let (tag, value, rest) = tlv(input)?;
    (tag == want).then_some((value, rest))
}

/// One DER tag-length-value: (tag, value, what follows). Single-byte tags only (every tag a
/// certificate's SAN path uses); lengths up to four bytes.
fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    if tag & 0x1F == 0x1F {
        return None;
    }
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7F);
        if n == 0 || n > 4 {
            return None;
        }
        let mut len = 0usize;
        for _ in 0..n {
            let (&b, r) = rest.split_first()?;
            rest = r;
            len = len.checked_mul(256)?.checked_add(usize::from(b))?;
        }
        len
    };
    if len > rest.len() {
        return None;
    }
    let (value, after) = rest.split_at(len);
    Some((tag, value, after))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert_with(uris: &[&str]) -> Vec<u8> {
        let mut params = rcgen::CertificateParams::new(vec!["verity.test".to_string()]).expect("params");
        for u in uris {
            params.subject_alt_names.push(rcgen::SanType::URI(
                rcgen::string::Ia5String::try_from(*u).expect("ia5"),
            ));
        }
        let key = rcgen::KeyPair::generate().expect("key");
        params.self_signed(&key).expect("cert").der().to_vec()
    }

    #[test]
    fn reads_the_one_spiffe_uri() {
        let der = cert_with(&["spiffe://cluster.local/ns/shop/sa/cart", "https://example.com/x"]);
        assert_eq!(uri_sans(&der).expect("parse").len(), 2);
        assert_eq!(
            spiffe_id(&der).as_deref(),
            Some("spiffe://cluster.local/ns/shop/sa/cart")
        );
    }

    #[test]
    fn none_or_two_spiffe_uris_is_no_identity() {
        assert_eq!(spiffe_id(&cert_with(&[])), None);
        assert_eq!(
            spiffe_id(&cert_with(&["spiffe://a/ns/x/sa/y", "spiffe://a/ns/x/sa/z"])),
            None
        );
    }

    #[test]
    fn truncated_and_garbage_input_never_panics() {
        let der = cert_with(&["spiffe://cluster.local/ns/shop/sa/cart"]);
        for cut in 0..der.len() {
            let _ = spiffe_id(der.get(..cut).unwrap_or_default());
        }
        let mut flipped = der.clone();
        for i in 0..flipped.len() {
            if let Some(b) = flipped.get_mut(i) {
                *b ^= 0xFF;
            }
            let _ = spiffe_id(&flipped);
            if let Some(b) = flipped.get_mut(i) {
                *b ^= 0xFF;
            }
        }
        assert_eq!(tlv(&[0x30, 0x84, 0xFF, 0xFF, 0xFF, 0xFF]), None);
        assert_eq!(tlv(&[0x30, 0x85, 1, 1, 1, 1, 1]), None);
        assert_eq!(tlv(&[0x1F, 0x01, 0x00]), None);
    }
}
