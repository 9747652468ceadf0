//! Which rows of a text column a regular expression can match, found for the whole batch at
//! once from the literals every match must start with.
//!
//! Matching row by row costs a call into the regex engine per row, most of which rejects at
//! once: attack patterns rarely match real traffic. Every match of a pattern begins with one
//! of its *prefix literals* (regex-syntax's extraction; the regex crate's own prefilter rests
//! on the same guarantee, case-insensitive variants included). One multi-literal search over
//! the column's contiguous value bytes finds the rows that hold one of them; only those rows
//! go to the regex engine. A literal found across two rows' boundary is not inside a row and
//! marks nothing, and the search resumes at the next row's start, so such an occurrence never
//! hides one that lies inside a row.

use aho_corasick::{AhoCorasick, AhoCorasickKind, Input};
use arrow::array::{Array, StringArray};
use regex_syntax::hir::literal::{ExtractKind, Extractor};

/// More literals than this and the search stops paying for itself.
const MAX_LITERALS: usize = 256;

/// The prefix literals of one pattern, ready to search.
#[derive(Debug, Clone)]
pub(crate) struct LiteralPrefilter {
    literals: AhoCorasick,
    /// Which byte values occur in some literal.
    bytes: [bool; 256],
}

impl LiteralPrefilter {
    /// The prefilter of `pattern` (exactly as given to `regex::Regex::new`), or None when it
    /// has no usable prefix literals: a match may start anywhere or with the empty string,
    /// or the set is too large.
    pub(crate) fn new(pattern: &str) -> Option<Self> {
        let hir = regex_syntax::parse(pattern).ok()?;
        let seq = Extractor::new().kind(ExtractKind::Prefix).extract(&hir);
        let literals = seq.literals()?;
        if literals.is_empty() || literals.len() > MAX_LITERALS || seq.min_literal_len()? == 0 {
            return None;
        }
        let mut bytes = [false; 256];
        for &b in literals.iter().flat_map(|l| l.as_bytes()) {
            bytes[usize::from(b)] = true;
        }
        let literals = searcher(literals.iter().map(|l| l.as_bytes()), MAX_DFA_BYTES)?;
        Some(Self { literals, bytes })
    }

    /// Whether some literal holds one of the bytes of `text`.
    pub(crate) fn shares_a_byte_with(&self, text: &[u8]) -> bool {
        text.iter().any(|&b| self.bytes[usize::from(b)])
    }

    /// For each row of `text`, whether its value holds one of the literals (so the regex may
    /// match it). NULL rows are marked from whatever bytes they cover; callers keep the NULL.
    ///
    /// When most rows hold a literal (traffic built to defeat the prefilter, or a literal
    /// that is common after all), searching costs more than it saves: once at least
    /// [`GIVE_UP_AFTER`] rows are searched and more than half of them are marked, the rest are
    /// marked without searching.
    pub(crate) fn candidates(&self, text: &StringArray) -> Vec<bool> {
        let mut marked = vec![false; text.len()];
        let offsets: Vec<usize> = text
            .value_offsets()
            .iter()
            .map(|&o| usize::try_from(o).unwrap_or(0))
            .collect();
        let (Some(&first), Some(&last)) = (offsets.first(), offsets.last()) else {
            return marked;
        };
        let Some(bytes) = text.value_data().get(first..last) else {
            return marked;
        };
        // Standard match semantics report the occurrence that ends first. So once a row holds
        // an occurrence the search skips to the next row, and an occurrence that runs past its
        // row's end means the row holds none: the search resumes at the next row's start,
        // where an occurrence the crossing one overlapped may begin.
        let (mut row, mut count) = (0, 0usize);
        let mut at = 0;
        while let Some(hit) = self.literals.find(Input::new(bytes).range(at..)) {
            let start = hit.start() + first;
            // Hits move forward, so the row holding `start` is at or after the last one.
            while offsets.get(row + 1).is_some_and(|&end| end <= start) {
                row += 1;
            }
            let Some(&row_end) = offsets.get(row + 1) else { break };
            if hit.end() + first <= row_end
                && let Some(flag) = marked.get_mut(row)
            {
                *flag = true;
                count += 1;
            }
            row += 1;
            if row >= GIVE_UP_AFTER && count * 2 > row {
                marked.iter_mut().skip(row).for_each(|m| *m = true);
                break;
            }
            at = row_end.saturating_sub(first);
            if at >= bytes.len() {
                break;
            }
        }
        marked
    }
}

/// The largest DFA a prefilter keeps; a larger one is rebuilt as the crate's default. The
/// pack's largest (the SQL injection pattern's 182 case variants) takes about 96 KiB.
const MAX_DFA_BYTES: usize = 1 << 20;

/// A DFA over `literals` (one table lookup per byte), unless it would take more than
/// `max_dfa_bytes`; then the crate's own choice. Left to choose, the crate builds a DFA for
/// small sets but a contiguous NFA for large ones (a case-insensitive pattern gives many
/// case variants: 182 for the SQL injection rule), and that NFA scanned about a fifth
/// slower.
fn searcher<'l>(literals: impl Iterator<Item = &'l [u8]> + Clone, max_dfa_bytes: usize) -> Option<AhoCorasick> {
    let dfa = AhoCorasick::builder()
        .kind(Some(AhoCorasickKind::DFA))
        .build(literals.clone())
        .ok()
        .filter(|d| d.memory_usage() <= max_dfa_bytes);
    match dfa {
        Some(d) => Some(d),
        None => AhoCorasick::new(literals).ok(),
    }
}

/// Rows searched before the prefilter may judge itself useless on a column.
const GIVE_UP_AFTER: usize = 256;

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use regex::Regex;

    use super::*;

    #[test]
    fn patterns_without_required_literals_have_no_prefilter() {
        assert!(LiteralPrefilter::new(".*").is_none());
        assert!(LiteralPrefilter::new("a*").is_none());
        assert!(LiteralPrefilter::new(r"\w+x").is_none());
        assert!(LiteralPrefilter::new("(?i)(jndi|ldap)").is_some());
    }

    #[test]
    fn the_pack_patterns_search_with_a_dfa_and_a_larger_one_falls_back() {
        for pattern in pack_patterns() {
            if let Some(p) = LiteralPrefilter::new(pattern) {
                assert_eq!(p.literals.kind(), AhoCorasickKind::DFA, "{pattern}");
            }
        }
        // As many literals as a case-insensitive pattern gives: left to choose, the crate
        // takes an NFA for these.
        let words: Vec<String> = (0..200).map(|i| format!("w{i}/")).collect();
        let literals = || words.iter().map(|w| w.as_bytes());
        let fallback = searcher(literals(), 0).expect("searcher");
        assert_ne!(fallback.kind(), AhoCorasickKind::DFA);
        let dfa = searcher(literals(), MAX_DFA_BYTES).expect("searcher");
        assert_eq!(dfa.kind(), AhoCorasickKind::DFA);
        let text = b"/a/w17/b/w199/c/w3x/w3/";
        let found = |s: &AhoCorasick| s.find_iter(text).map(|m| (m.start(), m.end())).collect::<Vec<_>>();
        assert_eq!(found(&fallback), found(&dfa));
        assert_eq!(found(&dfa), vec![(3, 7), (9, 14), (20, 23)]);
    }

    #[test]
    fn a_literal_across_two_rows_marks_neither() {
        let p = LiteralPrefilter::new(r"\.\./").expect("prefilter");
        let text = StringArray::from(vec!["a..", "/b", "x../y", ""]);
        assert_eq!(p.candidates(&text), vec![false, false, true, false]);
    }

    #[test]
    fn a_sliced_array_is_searched_in_its_own_rows() {
        let p = LiteralPrefilter::new("(?i)union").expect("prefilter");
        let text = StringArray::from(vec!["UNION", "nothing", "x uNiOn y", "union"]);
        let sliced = text.slice(1, 2);
        assert_eq!(
            p.candidates(sliced.as_any().downcast_ref().expect("text")),
            vec![false, true]
        );
    }

    #[test]
    fn a_column_where_most_rows_hold_a_literal_is_marked_whole() {
        let p = LiteralPrefilter::new(r"\.\./").expect("prefilter");
        let rows: Vec<String> = (0..1000)
            .map(|i| {
                if i % 4 == 0 {
                    "/ok".to_string()
                } else {
                    format!("/{i}/../x")
                }
            })
            .collect();
        let marked = p.candidates(&StringArray::from(rows.clone()));
        // Searched until the verdict, then every row is a candidate.
        assert!(!marked[0] && marked[1]);
        assert!(marked[GIVE_UP_AFTER..].iter().all(|&m| m));
        let sparse: Vec<&str> = (0..1000).map(|i| if i == 700 { "/../" } else { "/ok" }).collect();
        let marked = p.candidates(&StringArray::from(sparse));
        assert_eq!(marked.iter().filter(|&&m| m).count(), 1);
        assert!(marked[700]);
    }

    fn pack_patterns() -> Vec<&'static str> {
        vec![
            r"(?i)(\.\./|\.\.%2f|%2e%2e(/|%2f|%5c)|\.\.\\|\.\.%5c)",
            r"(?i)(\$|%24)(\{|%7b)\s*((jndi|j\$\{|\$\{)|(lower|upper|env|sys|::-)[:\}])",
            r"(?i)(union(\s|%20|\+|/\*\*/)+(all(\s|%20|\+)+)?select|('|%27)(\s|%20|\+)*or(\s|%20|\+)+('|%27)?\d+('|%27)?(\s|%20|\+)*(=|%3d)|sleep(\(|%28)\d+|benchmark(\(|%28)|information_schema)",
            r"(?i)k[a-c]",
            "^/admin",
            r"(?m)^x$",
        ]
    }

    proptest! {
        /// Every row the regex matches is a candidate, whatever the rows hold and however
        /// the array is sliced.
        #[test]
        fn every_match_is_a_candidate(
            rows in proptest::collection::vec(
                proptest::option::of("([./%2eEfFcC5\\\\$\\{7bB:jndiJNDIunoUNOselctSELCT'=1 kK\u{212A}ſ^x\\n-]){0,12}"),
                0..24,
            ),
            skip in 0usize..4,
        ) {
            let array = StringArray::from(rows.clone());
            let skip = skip.min(array.len());
            let sliced = array.slice(skip, array.len() - skip);
            let text: &StringArray = sliced.as_any().downcast_ref().expect("text");
            for pattern in pack_patterns() {
                let regex = Regex::new(pattern).expect("regex");
                let Some(p) = LiteralPrefilter::new(pattern) else { continue };
                let marked = p.candidates(text);
                for (i, value) in rows.iter().skip(skip).enumerate() {
                    if let Some(v) = value {
                        prop_assert!(!regex.is_match(v) || marked[i], "{pattern} matches {v:?}, not marked");
                    }
                }
            }
        }
    }
}
