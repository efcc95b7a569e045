//! Credential redaction: every occurrence of a passed secret value becomes `[redacted]`.

/// What a secret is replaced with.
pub const REDACTED: &str = "[redacted]";

/// Values shorter than this are not redacted as substrings. A short value (`1`, `true`,
/// `en_US`) matches everywhere, so replacing it would mangle ordinary output, and it
/// protects nothing: a secret that short can be guessed anyway.
pub const MIN_SECRET_LEN: usize = 8;

/// Replaces secret values in text. Built from the values of the environment variables a
/// caller passes to the agent; parsers apply it to whole lines, so a secret split across
/// read chunks is still found.
#[derive(Debug, Clone, Default)]
pub struct Redactor {
    /// Longest first, so a secret containing another one is replaced whole.
    secrets: Vec<String>,
}

impl Redactor {
    /// A redactor for these values; values shorter than [`MIN_SECRET_LEN`] are ignored.
    pub fn new<I, S>(values: I) -> Redactor
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut secrets: Vec<String> = values
            .into_iter()
            .map(Into::into)
            .filter(|value| value.len() >= MIN_SECRET_LEN)
            .collect();
        secrets.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        secrets.dedup();
        Redactor { secrets }
    }

    /// A redactor for the values of `(name, value)` environment pairs.
    pub fn from_env<'a>(env: impl IntoIterator<Item = (&'a str, &'a str)>) -> Redactor {
        Redactor::new(env.into_iter().map(|(_, value)| value))
    }

    pub fn is_empty(&self) -> bool {
        self.secrets.is_empty()
    }

    /// `text` with every secret replaced.
    pub fn redact(&self, text: &str) -> String {
        let mut owned = text.to_owned();
        self.redact_in_place(&mut owned);
        owned
    }

    pub fn redact_in_place(&self, text: &mut String) {
        for secret in &self.secrets {
            if text.contains(secret.as_str()) {
                *text = text.replace(secret.as_str(), REDACTED);
            }
        }
    }

    /// Redacts a text that was cut from a longer one: besides whole secrets, a tail that
    /// is the beginning of a secret is dropped, so a cut never leaks half a key.
    pub fn redact_cut(&self, text: &str) -> String {
        let mut redacted = self.redact(text);
        for secret in &self.secrets {
            let longest_prefix = (1..secret.len())
                .rev()
                .filter(|&len| secret.is_char_boundary(len))
                .find(|&len| redacted.ends_with(&secret[..len]));
            if let Some(len) = longest_prefix {
                redacted.truncate(redacted.len() - len);
                redacted.push_str(REDACTED);
            }
        }
        redacted
    }

    /// Redacts every string inside a JSON value, object keys included.
    pub fn redact_json(&self, value: &mut serde_json::Value) {
        match value {
            serde_json::Value::String(text) => self.redact_in_place(text),
            serde_json::Value::Array(items) => items.iter_mut().for_each(|v| self.redact_json(v)),
            serde_json::Value::Object(map) => {
                let entries = std::mem::take(map);
                for (mut key, mut item) in entries {
                    self.redact_in_place(&mut key);
                    self.redact_json(&mut item);
                    map.insert(key, item);
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_occurrence_is_replaced() {
        let redactor = Redactor::new(["sk-ant-secret-1234"]);
        assert_eq!(
            redactor.redact("a sk-ant-secret-1234 b sk-ant-secret-1234"),
            "a [redacted] b [redacted]"
        );
    }

    #[test]
    fn short_values_are_not_redacted() {
        let redactor = Redactor::new(["true", "1234567"]);
        assert!(redactor.is_empty());
        assert_eq!(redactor.redact("true 1234567"), "true 1234567");
    }

    #[test]
    fn longer_secret_containing_a_shorter_one_is_replaced_whole() {
        let redactor = Redactor::new(["abcdefgh", "abcdefgh-ijklmnop"]);
        assert_eq!(redactor.redact("x abcdefgh-ijklmnop y"), "x [redacted] y");
    }

    #[test]
    fn cut_text_does_not_leak_a_secret_prefix() {
        let redactor = Redactor::new(["sk-ant-secret-1234"]);
        assert_eq!(redactor.redact_cut("output sk-ant-se"), "output [redacted]");
        assert_eq!(redactor.redact_cut("plain"), "plain");
    }

    #[test]
    fn json_strings_and_keys_are_redacted() {
        let redactor = Redactor::from_env([("ANTHROPIC_API_KEY", "sk-ant-secret-1234")]);
        let mut value = serde_json::json!({
            "command": "echo sk-ant-secret-1234",
            "nested": [{"sk-ant-secret-1234": 1}],
            "n": 5
        });
        redactor.redact_json(&mut value);
        assert_eq!(
            value,
            serde_json::json!({
                "command": "echo [redacted]",
                "nested": [{"[redacted]": 1}],
                "n": 5
            })
        );
    }
}
