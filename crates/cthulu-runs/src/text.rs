//! Limits and text cutting shared by the parsers.

/// The longest line a parser buffers; a longer one is reported as malformed and skipped.
pub const MAX_LINE: usize = 1024 * 1024;

/// The most bytes of a tool result's text kept in its event.
pub const SUMMARY_LIMIT: usize = 4 * 1024;

/// The most bytes of a malformed line quoted in its event.
pub const EXCERPT_LIMIT: usize = 200;

/// `text` cut to at most `limit` bytes on a character boundary, saying how much was cut.
pub(crate) fn cut(text: &str, limit: usize) -> String {
    if text.len() <= limit {
        return text.to_owned();
    }
    let mut end = limit;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} more bytes)", &text[..end], text.len() - end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cut_respects_character_boundaries() {
        assert_eq!(cut("short", 10), "short");
        assert_eq!(cut("héllo", 2), "h… (5 more bytes)");
    }
}
