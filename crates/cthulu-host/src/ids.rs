//! Random ids for processes (`p…`) and checkpoints (`c…`): a prefix letter and lowercase
//! letters and digits, safe in file names and URLs.

const ALPHABET: &[u8; 36] = b"abcdefghijklmnopqrstuvwxyz0123456789";
const RANDOM_LEN: usize = 12;

/// `prefix` followed by 12 random characters (about 62 bits).
pub(crate) fn random_id(prefix: char) -> String {
    let mut raw = [0u8; RANDOM_LEN];
    getrandom::fill(&mut raw).expect("the operating system random source failed");
    let mut id = String::with_capacity(RANDOM_LEN + 1);
    id.push(prefix);
    // The modulo bias (256 % 36) is irrelevant for ids.
    id.extend(
        raw.iter()
            .map(|byte| ALPHABET[*byte as usize % ALPHABET.len()] as char),
    );
    id
}

/// Whether `id` could be one of ours: a lowercase letter then lowercase letters and
/// digits. Ids come back in requests and become directory names, so this keeps `..` and
/// `/` out.
pub(crate) fn is_valid_id(id: &str, prefix: char) -> bool {
    id.len() == RANDOM_LEN + 1
        && id.starts_with(prefix)
        && id
            .bytes()
            .all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_valid_and_distinct() {
        let first = random_id('p');
        let second = random_id('p');
        assert_ne!(first, second);
        assert!(is_valid_id(&first, 'p'));
        assert!(!is_valid_id(&first, 'c'));
        assert!(!is_valid_id("p../../etc/x", 'p'));
        assert!(!is_valid_id("p", 'p'));
    }
}
