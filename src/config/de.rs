//! Lenient string deserializers. String-typed keys accept any scalar: a TOML `node_id = 7` or a
//! token written without quotes becomes the string `"7"`. Optional keys take an empty string as
//! unset.

use std::fmt;
use std::path::PathBuf;

use serde::de::{self, Deserializer, Visitor};

struct ScalarString;

impl Visitor<'_> for ScalarString {
    type Value = String;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<String, E> {
        Ok(v.to_string())
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<String, E> {
        Ok(v)
    }

    fn visit_char<E: de::Error>(self, v: char) -> Result<String, E> {
        Ok(v.to_string())
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<String, E> {
        Ok(v.to_string())
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<String, E> {
        Ok(v.to_string())
    }

    fn visit_i128<E: de::Error>(self, v: i128) -> Result<String, E> {
        Ok(v.to_string())
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<String, E> {
        Ok(v.to_string())
    }

    fn visit_u128<E: de::Error>(self, v: u128) -> Result<String, E> {
        Ok(v.to_string())
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<String, E> {
        Ok(v.to_string())
    }
}

struct OptScalarString;

impl<'de> Visitor<'de> for OptScalarString {
    type Value = Option<String>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        let s = d.deserialize_any(ScalarString)?;
        Ok((!s.is_empty()).then_some(s))
    }
}

pub fn string<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    d.deserialize_any(ScalarString)
}

pub fn opt_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    d.deserialize_option(OptScalarString)
}

pub fn opt_path<'de, D: Deserializer<'de>>(d: D) -> Result<Option<PathBuf>, D::Error> {
    Ok(opt_string(d)?.map(PathBuf::from))
}

/// A list of strings, written as a list (`["a", "b"]`, in a file) or as one string of entries
/// separated by commas or spaces (`"a, b"`, what an environment variable holds). Empty = unset.
struct OptList;

impl<'de> Visitor<'de> for OptList {
    type Value = Option<Vec<String>>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a list of strings, or one string of entries separated by commas")
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(OptList)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        let items: Vec<String> = v
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect();
        Ok((!items.is_empty()).then_some(items))
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        struct Item(String);
        impl<'de> serde::Deserialize<'de> for Item {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                d.deserialize_any(ScalarString).map(Item)
            }
        }
        let mut items = Vec::new();
        while let Some(Item(s)) = seq.next_element::<Item>()? {
            items.push(s);
        }
        Ok((!items.is_empty()).then_some(items))
    }
}

pub fn opt_list<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    d.deserialize_option(OptList)
}

#[cfg(test)]
mod tests {
    use crate::config::check_file;
    use crate::config::testutil::file;

    #[test]
    fn unquoted_scalars_in_file_become_strings() {
        let f = file("[server]\nnode_id = 7\n[consul]\ntoken = 123456\n");
        let c = check_file(f.path()).unwrap();
        assert_eq!(c.server.node_id.as_deref(), Some("7"));
        assert_eq!(c.consul.token.as_deref(), Some("123456"));
    }

    #[test]
    fn lists_from_a_file_or_one_string() {
        let list = |toml: &str| {
            check_file(file(toml).path())
                .unwrap()
                .server
                .proxy_protocol_from
        };
        let want = Some(vec!["10.0.0.7".to_string(), "10.1.0.0/16".to_string()]);
        assert_eq!(
            list("[server]\nproxy_protocol_from = [\"10.0.0.7\", \"10.1.0.0/16\"]\n"),
            want
        );
        assert_eq!(
            list("[server]\nproxy_protocol_from = \"10.0.0.7, 10.1.0.0/16\"\n"),
            want
        );
        assert_eq!(list("[server]\nproxy_protocol_from = []\n"), None);
        assert_eq!(list("[server]\nproxy_protocol_from = \"\"\n"), None);
        let env = crate::config::testutil::env(&[(
            "CHAT_ZINX_SERVER__PROXY_PROTOCOL_FROM",
            "10.0.0.7,10.1.0.0/16",
        )]);
        let c = crate::config::load_from(None, env).unwrap();
        assert_eq!(c.server.proxy_protocol_from, want);
    }
}
