//! Text a peer wrote (a running image's report, an agent's log line), made safe to show: a
//! peer must not be able to end a line, forge one, move the cursor, change colours, ring
//! the bell or reorder what a terminal shows. Control characters and the Unicode
//! bidirectional controls are written as escapes (`\n`, `\u{1b}`), and the text is cut to
//! a bound, marked with `…`. The result is one line of ordinary characters; JSON stays valid
//! whatever it holds.

/// Longest report or log line shown, in characters.
pub const MAX_CHARS: usize = 300;

/// `text` as one printable line of at most `max` characters (escapes count as the characters
/// they print).
pub fn printable(text: &str, max: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max));
    let mut shown = 0usize;
    for c in text.chars() {
        let piece: String = if unsafe_to_show(c) { c.escape_default().collect() } else { c.to_string() };
        let n = piece.chars().count();
        if shown + n > max {
            out.push('…');
            break;
        }
        out.push_str(&piece);
        shown += n;
    }
    out
}

/// Characters that change how a terminal shows what follows: C0 and C1 controls, DEL, and
/// the bidirectional embedding, override and isolate marks.
fn unsafe_to_show(c: char) -> bool {
    c.is_control() || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_forged_line_escapes_and_colours_are_shown_escaped() {
        let hostile = "lc1 up\nOK: chassis test booted\x1b[31m red\x07\u{202e}cba";
        assert_eq!(
            printable(hostile, MAX_CHARS),
            "lc1 up\\nOK: chassis test booted\\u{1b}[31m red\\u{7}\\u{202e}cba"
        );
        assert_eq!(printable("ordinary words, ünïcödé", MAX_CHARS), "ordinary words, ünïcödé");
    }

    #[test]
    fn long_text_is_cut_to_the_bound_and_marked() {
        let s = printable(&"x".repeat(1000), 10);
        assert_eq!(s, format!("{}…", "x".repeat(10)));
        // An escape is never cut in half.
        assert_eq!(printable("abcdefghi\n", 10), "abcdefghi…");
    }

    proptest! {
        #[test]
        fn the_result_is_one_line_of_printable_characters_within_the_bound(s in ".*", max in 0usize..400) {
            let p = printable(&s, max);
            prop_assert!(p.chars().all(|c| !unsafe_to_show(c)));
            prop_assert!(p.chars().count() <= max + 1);
        }
    }
}
