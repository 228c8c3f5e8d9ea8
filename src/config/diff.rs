//! Which keys differ between two configurations (what a reload changed).

use super::keys::{lookup, split_key, KEYS};
use super::Config;

/// The keys whose values differ between `a` and `b`, in [`KEYS`] order.
pub fn changed_keys(a: &Config, b: &Config) -> Vec<&'static str> {
    let (Ok(ta), Ok(tb)) = (toml::Table::try_from(a), toml::Table::try_from(b)) else {
        return Vec::new();
    };
    let get = |t: &toml::Table, key: &str| {
        let (section, leaf) = split_key(key);
        t.get(section)
            .and_then(|s| s.as_table())
            .and_then(|s| lookup(s, leaf))
            .cloned()
    };
    KEYS.iter()
        .map(|k| k.key)
        .filter(|k| get(&ta, k) != get(&tb, k))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changed_keys_names_what_differs() {
        let a = Config::default();
        assert!(changed_keys(&a, &a).is_empty());
        let mut b = a.clone();
        b.log.level = "debug".into();
        b.server.listen = "127.0.0.1:1".into();
        b.consul.token = Some("t".into());
        assert_eq!(
            changed_keys(&a, &b),
            ["server.listen", "log.level", "consul.token"]
        );
    }
}
