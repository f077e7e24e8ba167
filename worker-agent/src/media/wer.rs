//! Word error rate: how far a transcript is from the known text.
//!
//! Both texts are normalised the same way before comparing: Whisper's notes on non-speech
//! (`[BLANK_AUDIO]`, `(music)`, `[inaudible]`) are dropped, then lower case, every character
//! that is not a letter, a digit or an apostrophe inside a word becomes a space, and the words
//! are split on white space. The rate is the word-level edit distance (substitutions + deletions +
//! insertions) divided by the number of reference words, as speech benchmarks report it; it can
//! exceed 1 when the hypothesis adds many words.

/// The words of `text` after normalisation.
pub fn normalized_words(text: &str) -> Vec<String> {
    let mut cleaned = String::with_capacity(text.len());
    // A note is a bracketed span closed within NOTE_MAX characters; a bracket left open (Whisper
    // writes stray "[" too) is only punctuation.
    const NOTE_MAX: usize = 40;
    let mut chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let close = match chars[i] {
            '[' => ']',
            '(' => ')',
            _ => {
                i += 1;
                continue;
            }
        };
        let end = chars[i + 1..]
            .iter()
            .take(NOTE_MAX)
            .position(|&c| c == close || c == '[' || c == '(')
            .map(|k| i + 1 + k)
            .filter(|&k| chars[k] == close);
        match end {
            Some(k) => {
                chars[i..=k].fill(' ');
                i = k + 1;
            }
            None => i += 1,
        }
    }
    for (i, &c) in chars.iter().enumerate() {
        let inner_apostrophe = (c == '\'' || c == '\u{2019}')
            && i > 0
            && chars[i - 1].is_alphanumeric()
            && chars.get(i + 1).is_some_and(|n| n.is_alphanumeric());
        if c.is_alphanumeric() {
            cleaned.extend(c.to_lowercase());
        } else if inner_apostrophe {
            cleaned.push('\'');
        } else {
            cleaned.push(' ');
        }
    }
    cleaned.split_whitespace().map(str::to_string).collect()
}

/// Edit counts between a reference and a hypothesis.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WordErrors {
    pub substitutions: usize,
    pub deletions: usize,
    pub insertions: usize,
    /// Words in the reference.
    pub reference_words: usize,
}

impl WordErrors {
    /// Errors over reference words (0 for an empty reference and an empty hypothesis; 1 per
    /// inserted word when the reference is empty).
    pub fn rate(&self) -> f64 {
        let errors = self.substitutions + self.deletions + self.insertions;
        if self.reference_words == 0 {
            return errors as f64;
        }
        errors as f64 / self.reference_words as f64
    }
}

/// Word errors of `hypothesis` against `reference`.
pub fn word_errors(reference: &str, hypothesis: &str) -> WordErrors {
    let r = normalized_words(reference);
    let h = normalized_words(hypothesis);
    // cost[j] for the current row; each cell keeps (cost, subs, dels, ins) of one best path.
    type Cell = (usize, usize, usize, usize);
    let mut prev: Vec<Cell> = (0..=h.len()).map(|j| (j, 0, 0, j)).collect();
    for i in 1..=r.len() {
        let mut cur: Vec<Cell> = Vec::with_capacity(h.len() + 1);
        cur.push((i, 0, i, 0));
        for j in 1..=h.len() {
            let diag = prev[j - 1];
            let sub = if r[i - 1] == h[j - 1] {
                diag
            } else {
                (diag.0 + 1, diag.1 + 1, diag.2, diag.3)
            };
            let up = prev[j];
            let del = (up.0 + 1, up.1, up.2 + 1, up.3);
            let left = cur[j - 1];
            let ins = (left.0 + 1, left.1, left.2, left.3 + 1);
            let best = [sub, del, ins]
                .into_iter()
                .min_by_key(|c| c.0)
                .expect("three candidates");
            cur.push(best);
        }
        prev = cur;
    }
    let (_, substitutions, deletions, insertions) = prev[h.len()];
    WordErrors {
        substitutions,
        deletions,
        insertions,
        reference_words: r.len(),
    }
}

/// The longest run of consecutive `reference` words that a best alignment leaves out of
/// `hypothesis` (a lost sentence shows as a long run; decoding noise as short ones).
pub fn longest_missing_run(reference: &str, hypothesis: &str) -> usize {
    let r = normalized_words(reference);
    let h = normalized_words(hypothesis);
    let (n, m) = (r.len(), h.len());
    // Edit distances, then a walk back that prefers matches over deletions.
    let mut d = vec![vec![0usize; m + 1]; n + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=n {
        for j in 1..=m {
            let sub = d[i - 1][j - 1] + usize::from(r[i - 1] != h[j - 1]);
            d[i][j] = sub.min(d[i - 1][j] + 1).min(d[i][j - 1] + 1);
        }
    }
    let (mut i, mut j, mut run, mut longest) = (n, m, 0usize, 0usize);
    while i > 0 || j > 0 {
        if i > 0 && j > 0 && d[i][j] == d[i - 1][j - 1] + usize::from(r[i - 1] != h[j - 1]) {
            i -= 1;
            j -= 1;
            run = 0;
        } else if i > 0 && d[i][j] == d[i - 1][j] + 1 {
            i -= 1;
            run += 1;
            longest = longest.max(run);
        } else {
            j -= 1;
        }
    }
    longest
}

/// The word error rate of `hypothesis` against `reference`.
pub fn word_error_rate(reference: &str, hypothesis: &str) -> f64 {
    word_errors(reference, hypothesis).rate()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalisation_drops_case_and_punctuation_but_keeps_contractions() {
        assert_eq!(
            normalized_words("And so, my fellow Americans: ask NOT -- don't ask 'why'."),
            [
                "and",
                "so",
                "my",
                "fellow",
                "americans",
                "ask",
                "not",
                "don't",
                "ask",
                "why"
            ]
        );
    }

    #[test]
    fn identical_texts_have_no_errors() {
        let e = word_errors("Ask not what your country", "ask not, what your country!");
        assert_eq!(e.rate(), 0.0);
        assert_eq!(e.reference_words, 5);
    }

    #[test]
    fn each_kind_of_error_is_counted() {
        // "not" deleted, "your" -> "the", "today" inserted.
        let e = word_errors(
            "ask not what your country can do",
            "ask what the country can do today",
        );
        assert_eq!(
            (e.substitutions, e.deletions, e.insertions),
            (1, 1, 1),
            "{e:?}"
        );
        assert!((e.rate() - 3.0 / 7.0).abs() < 1e-12);
    }

    #[test]
    fn notes_on_non_speech_are_not_words_and_lost_runs_are_measured() {
        assert_eq!(
            normalized_words("[BLANK_AUDIO] Hello (whooshing) there [inaudible]"),
            ["hello", "there"]
        );
        // A bracket left open does not swallow what follows.
        assert_eq!(
            normalized_words("came out [ Terry said so. [ federal"),
            ["came", "out", "terry", "said", "so", "federal"]
        );
        let full = "hello there. oh, I'm originally from Chicago also. I'm in New Jersey now.";
        let lost = "hello there. I'm in New Jersey now.";
        assert_eq!(longest_missing_run(full, lost), 6);
        let noisy = "hello. oh I am originally from Chicago also. in New Jersey now.";
        assert!(longest_missing_run(full, noisy) <= 2);
        assert_eq!(longest_missing_run(full, full), 0);
    }

    #[test]
    fn rate_can_exceed_one_and_handles_empty_texts() {
        assert_eq!(word_error_rate("", ""), 0.0);
        assert_eq!(word_error_rate("", "hello there"), 2.0);
        assert_eq!(word_error_rate("hello", ""), 1.0);
        assert_eq!(word_error_rate("a", "b c d"), 3.0);
    }
}
