//! "Did you mean …?": the known section or key closest to a misspelt one.

use super::keys::{sections, split_key, KEYS};

pub(super) fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur.push((prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

/// A known section close to `name`, if any.
pub(super) fn suggest_section(name: &str) -> Option<String> {
    sections()
        .into_iter()
        .filter(|s| edit_distance(name, s) <= (s.len() / 3).clamp(1, 2))
        .min_by_key(|s| edit_distance(name, s))
        .map(str::to_string)
}

/// A known key close to `given` (`server.listn`, `servr.listen`, a bare `listen`), if any.
pub(super) fn suggest_key(given: &str) -> Option<String> {
    if given.contains('.') {
        let best = KEYS
            .iter()
            .map(|k| (edit_distance(given, k.key), k.key))
            .min()
            .filter(|(d, k)| *d <= (k.len() / 4).clamp(1, 3));
        if let Some((_, k)) = best {
            return Some(k.to_string());
        }
    }
    // The right key name in a wrong, misspelt or missing section.
    let leaf = given.rsplit('.').next().unwrap_or(given);
    let by_leaf: Vec<&str> = KEYS
        .iter()
        .map(|k| k.key)
        .filter(|k| split_key(k).1 == leaf)
        .collect();
    match by_leaf[..] {
        [only] => Some(only.to_string()),
        _ => None,
    }
}
