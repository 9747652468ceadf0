//! The value matchers of an `AuthorizationPolicy`: Istio's string forms (exact, `prefix*`,
//! `*suffix`, `*` for presence), path templates (`{*}`, `{**}`), ports and IP blocks.

use std::net::IpAddr;

/// One string value of a policy field, parsed once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pattern {
    Exact(String),
    Prefix(String),
    Suffix(String),
    /// `*`: any non-empty value.
    Presence,
    /// A path with `{*}` (one segment) or `{**}` (any number of segments, last only) parts,
    /// split at `/`.
    Template(Vec<Segment>),
    /// A template Verity does not evaluate (`{**}` followed by more segments): whether it
    /// matches is unknown.
    Undecided,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    Literal(String),
    /// `{*}`: exactly one non-empty segment.
    One,
    /// `{**}`: whatever follows, zero or more segments (only as the last part).
    Rest,
}

impl Pattern {
    /// Parses Istio's string match syntax. `lowercase` folds the pattern for fields matched
    /// without regard to case (hosts).
    pub fn parse(text: &str, lowercase: bool) -> Pattern {
        let text = if lowercase {
            text.to_ascii_lowercase()
        } else {
            text.to_string()
        };
        if text == "*" {
            Pattern::Presence
        } else if let Some(rest) = text.strip_prefix('*') {
            Pattern::Suffix(rest.to_string())
        } else if let Some(rest) = text.strip_suffix('*') {
            Pattern::Prefix(rest.to_string())
        } else {
            Pattern::Exact(text)
        }
    }

    /// Parses a `paths` entry: a template when it holds `{*}` or `{**}`, else a string match.
    pub fn parse_path(text: &str) -> Result<Pattern, String> {
        if !text.contains('{') {
            return Ok(Pattern::parse(text, false));
        }
        let parts: Vec<&str> = text.split('/').collect();
        let mut segments = Vec::with_capacity(parts.len());
        for (i, part) in parts.iter().enumerate() {
            match *part {
                "{*}" => segments.push(Segment::One),
                "{**}" if i + 1 == parts.len() => segments.push(Segment::Rest),
                // Istio accepts literal segments after `{**}`; their matching is not evaluated.
                "{**}" => return Ok(Pattern::Undecided),
                p if p.contains('{') || p.contains('}') || p.contains('*') => {
                    return Err(format!(
                        "path {text:?}: a template segment must be exactly `{{*}}` or `{{**}}`"
                    ));
                }
                p => segments.push(Segment::Literal(p.to_string())),
            }
        }
        Ok(Pattern::Template(segments))
    }

    pub fn matches(&self, value: &str) -> bool {
        match self {
            Pattern::Exact(p) => value == p,
            Pattern::Prefix(p) => value.starts_with(p.as_str()),
            Pattern::Suffix(p) => value.ends_with(p.as_str()),
            Pattern::Presence => !value.is_empty(),
            Pattern::Template(segments) => template_matches(segments, value),
            Pattern::Undecided => false,
        }
    }

    /// Matches ignoring ASCII case (the pattern was lowercased at parse time).
    pub fn matches_ignore_case(&self, value: &str) -> bool {
        match self {
            Pattern::Exact(p) => value.eq_ignore_ascii_case(p),
            Pattern::Prefix(p) => value.get(..p.len()).is_some_and(|v| v.eq_ignore_ascii_case(p)),
            Pattern::Suffix(p) => value
                .len()
                .checked_sub(p.len())
                .and_then(|start| value.get(start..))
                .is_some_and(|v| v.eq_ignore_ascii_case(p)),
            Pattern::Presence => !value.is_empty(),
            Pattern::Template(_) | Pattern::Undecided => self.matches(&value.to_ascii_lowercase()),
        }
    }
}

fn template_matches(segments: &[Segment], value: &str) -> bool {
    let mut parts = value.split('/');
    for (i, segment) in segments.iter().enumerate() {
        match segment {
            Segment::Literal(l) => {
                if parts.next() != Some(l.as_str()) {
                    return false;
                }
            }
            Segment::One => {
                if parts.next().is_none_or(str::is_empty) {
                    return false;
                }
            }
            Segment::Rest => {
                debug_assert_eq!(i + 1, segments.len());
                // Zero or more segments after the slash before it: `/foo/{**}` takes `/foo/` and
                // `/foo/a/b`, not `/foo`.
                return parts.next().is_some();
            }
        }
    }
    parts.next().is_none()
}

/// The path as Istio's default normalization (`BASE`) hands it to policies: unreserved
/// characters percent-decoded, `\` read as `/`, and `.`/`..` segments removed (RFC 3986).
/// Access logs record the path as the client sent it.
pub fn normalize_path(path: &str) -> std::borrow::Cow<'_, str> {
    if !path.contains(['%', '\\']) && !path.split('/').any(|s| s == "." || s == "..") {
        return std::borrow::Cow::Borrowed(path);
    }
    let bytes = path.as_bytes();
    let mut decoded = String::with_capacity(path.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%'
            && let Some(hex) = path.get(i + 1..i + 3)
            && let Ok(v) = u8::from_str_radix(hex, 16)
            && (v.is_ascii_alphanumeric() || matches!(v, b'-' | b'.' | b'_' | b'~'))
        {
            decoded.push(char::from(v));
            i += 3;
            continue;
        }
        let ch = path.get(i..).and_then(|rest| rest.chars().next()).unwrap_or('\u{fffd}');
        decoded.push(if ch == '\\' { '/' } else { ch });
        i += ch.len_utf8().max(1);
    }
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = decoded.split('/').collect();
    let last = segments.len().saturating_sub(1);
    for (n, segment) in segments.iter().enumerate() {
        match *segment {
            "." | ".." => {
                if *segment == ".." && out.len() > 1 {
                    out.pop();
                }
                if n == last {
                    out.push("");
                }
            }
            s => out.push(s),
        }
    }
    let joined = out.join("/");
    std::borrow::Cow::Owned(if joined.starts_with('/') || !path.starts_with('/') {
        joined
    } else {
        format!("/{joined}")
    })
}

/// An address or CIDR block of `ipBlocks`, `remoteIpBlocks` or a `source.ip` condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpBlock {
    network: IpAddr,
    prefix: u8,
}

impl IpBlock {
    pub fn parse(text: &str) -> Result<IpBlock, String> {
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let network: IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| format!("{text:?} is not an IP address or CIDR block"))?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{text:?} has an invalid prefix length"))?,
            None => max,
        };
        Ok(IpBlock { network, prefix })
    }

    pub fn contains(&self, addr: IpAddr) -> bool {
        match (self.network, addr) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                masked(u128::from(u32::from(n)), 32, self.prefix) == masked(u128::from(u32::from(a)), 32, self.prefix)
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                masked(u128::from(n), 128, self.prefix) == masked(u128::from(a), 128, self.prefix)
            }
            (IpAddr::V4(_), IpAddr::V6(a)) => a.to_ipv4_mapped().is_some_and(|a| self.contains(IpAddr::V4(a))),
            (IpAddr::V6(_), IpAddr::V4(a)) => self.contains(IpAddr::V6(a.to_ipv6_mapped())),
        }
    }
}

fn masked(bits: u128, width: u32, prefix: u8) -> u128 {
    let keep = u32::from(prefix).min(width);
    if keep == 0 {
        return 0;
    }
    let shift = width - keep;
    (bits >> shift) << shift
}

/// Parses an address as logged: bare, or `ip:port`, or `[v6]:port`.
pub fn parse_logged_ip(text: &str) -> Option<IpAddr> {
    let text = text.trim();
    if let Ok(ip) = text.parse() {
        return Some(ip);
    }
    if let Some(rest) = text.strip_prefix('[') {
        return rest.split_once(']').and_then(|(ip, _)| ip.parse().ok());
    }
    text.rsplit_once(':').and_then(|(ip, _)| ip.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn normalized_paths_hold_no_dot_segments(path in "[/a.%2eE\\\\é-]{0,24}") {
            let n = normalize_path(&path);
            prop_assert!(!n.split('/').any(|s| s == "." || s == ".."), "{path:?} -> {n:?}");
        }

        #[test]
        fn any_pattern_and_value_match_without_panicking(pattern in "\\PC{0,12}", value in "\\PC{0,12}") {
            for p in [Pattern::parse(&pattern, false), Pattern::parse(&pattern, true)] {
                let _ = p.matches(&value);
                let _ = p.matches_ignore_case(&value);
            }
            if let Ok(p) = Pattern::parse_path(&pattern) {
                let _ = p.matches(&value);
            }
        }

        #[test]
        fn host_matching_ignores_ascii_case(pattern in "[*]?[a-zA-Z.]{0,6}[*]?", value in "[a-zA-Z.]{0,8}") {
            let p = Pattern::parse(&pattern, true);
            prop_assert_eq!(p.matches_ignore_case(&value), p.matches(&value.to_ascii_lowercase()));
        }

        #[test]
        fn ipv4_blocks_match_like_masks(net in any::<u32>(), prefix in 0u8..=32, addr in any::<u32>()) {
            let text = format!("{}/{prefix}", std::net::Ipv4Addr::from(net));
            let block = IpBlock::parse(&text).expect("valid");
            let mask = if prefix == 0 { 0 } else { u32::MAX << (32 - u32::from(prefix)) };
            prop_assert_eq!(block.contains(std::net::IpAddr::V4(addr.into())), net & mask == addr & mask);
        }

        #[test]
        fn any_text_is_an_ip_block_or_an_error(text in "\\PC{0,20}") {
            let _ = IpBlock::parse(&text);
            let _ = parse_logged_ip(&text);
        }
    }

    #[test]
    fn string_forms() {
        assert!(Pattern::parse("/info", false).matches("/info"));
        assert!(!Pattern::parse("/info", false).matches("/info/x"));
        assert!(Pattern::parse("/api/*", false).matches("/api/v1"));
        assert!(Pattern::parse("*/info", false).matches("/x/info"));
        assert!(Pattern::parse("*", false).matches("x"));
        assert!(!Pattern::parse("*", false).matches(""));
        let host = Pattern::parse("Example.COM", true);
        assert!(host.matches_ignore_case("example.com"));
        assert!(Pattern::parse("*.Example.com", true).matches_ignore_case("a.EXAMPLE.com"));
        assert!(!Pattern::parse("*.example.com", true).matches_ignore_case("é"));
    }

    #[test]
    fn templates() {
        let one = Pattern::parse_path("/foo/{*}/bar").expect("valid");
        assert!(one.matches("/foo/x/bar"));
        assert!(!one.matches("/foo/x/y/bar"));
        assert!(!one.matches("/foo//bar"));
        let rest = Pattern::parse_path("/foo/{**}").expect("valid");
        assert!(rest.matches("/foo/a/b"));
        assert!(rest.matches("/foo/"));
        assert!(rest.matches("/foo/a//b"));
        assert!(!rest.matches("/foo"));
        assert!(!rest.matches("/bar/a"));
        assert_eq!(Pattern::parse_path("/foo/{**}/bar"), Ok(Pattern::Undecided));
        assert!(Pattern::parse_path("/foo/x{*}").is_err());
    }

    #[test]
    fn paths_are_normalized_like_istio() {
        assert_eq!(normalize_path("/a/b"), "/a/b");
        assert_eq!(normalize_path("/a/./b/../c"), "/a/c");
        assert_eq!(normalize_path("/a/%2e%2e/admin"), "/admin");
        assert_eq!(normalize_path("/%61dmin"), "/admin");
        assert_eq!(normalize_path("/a\\b"), "/a/b");
        assert_eq!(normalize_path("/../../etc"), "/etc");
        assert_eq!(normalize_path("/a/%2F/b"), "/a/%2F/b");
        assert_eq!(normalize_path("/a/.."), "/");
        assert_eq!(normalize_path("/é/%zz"), "/é/%zz");
    }

    #[test]
    fn ip_blocks() {
        let block = IpBlock::parse("10.1.0.0/16").expect("valid");
        assert!(block.contains("10.1.2.3".parse().expect("ip")));
        assert!(!block.contains("10.2.0.1".parse().expect("ip")));
        assert!(
            IpBlock::parse("1.2.3.4")
                .expect("valid")
                .contains("1.2.3.4".parse().expect("ip"))
        );
        assert!(
            IpBlock::parse("0.0.0.0/0")
                .expect("valid")
                .contains("8.8.8.8".parse().expect("ip"))
        );
        assert!(IpBlock::parse("10.0.0.0/33").is_err());
        assert!(IpBlock::parse("nope").is_err());
        assert_eq!(parse_logged_ip("10.0.0.1:8080"), "10.0.0.1".parse().ok());
        assert_eq!(parse_logged_ip("[::1]:80"), "::1".parse().ok());
        assert_eq!(parse_logged_ip("::1"), "::1".parse().ok());
    }
}
