//! What a new username or group name may be, so that a name cannot impersonate.
//!
//! Names are shown to other users and a username is also a way to address a user (208's
//! `to_user_id` takes a UUID, a username or a numeric id). So a new name
//!
//! * is stored in Unicode normalisation form C (NFC), and its uniqueness (case-insensitive) is
//!   checked in that form: two spellings of one text are one name;
//! * has no control, format, separator-line, private-use or unassigned characters (Unicode
//!   Cc, Cf, Zl, Zp, Co, Cn): no newlines, NUL, ANSI escapes, bidi overrides, zero-width
//!   characters;
//! * is not empty, not only whitespace, and neither starts nor ends with whitespace;
//! * for a username: is not all digits (it would read as a user id) and not UUID-shaped (it
//!   would read as a user's UUID).
//!
//! Names stored before these rules keep working for login and as 208 targets; a 208 target
//! that is all digits is looked up as an id before it is looked up as a name, so even such an
//! old name cannot shadow another user's id (see `ChatCore::resolve_user_id`).

use unicode_normalization::UnicodeNormalization;
use unicode_properties::{GeneralCategory, UnicodeGeneralCategory};

use super::directory::is_uuid_shaped;
use super::error::{ChatError, ChatResult};

/// What is being named.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameKind {
    User,
    Group,
}

/// `name` in normalisation form C (how new names are stored and looked up).
pub fn normalize(name: &str) -> String {
    name.nfc().collect()
}

/// Checks a new name (`field` names it in the error) and returns its stored form (NFC).
pub fn check_new_name(kind: NameKind, field: &str, name: &str) -> ChatResult<String> {
    let name = normalize(name);
    let invalid = |why: &str| Err(ChatError::Invalid(format!("{field} {why}")));
    if name.trim().is_empty() {
        return invalid("must not be empty or only whitespace");
    }
    if name.trim() != name {
        return invalid("must not start or end with whitespace");
    }
    if let Some(c) = name.chars().find(|c| forbidden(*c)) {
        return invalid(&format!(
            "must not contain control, format or invisible characters (found U+{:04X})",
            c as u32
        ));
    }
    if kind == NameKind::User {
        if name.chars().all(|c| c.is_ascii_digit()) {
            return invalid("must not be all digits (it would read as a user id)");
        }
        if is_uuid_shaped(&name) {
            return invalid("must not be shaped like a UUID (it would read as a user's UUID)");
        }
    }
    Ok(name)
}

fn forbidden(c: char) -> bool {
    use GeneralCategory::*;
    matches!(
        c.general_category(),
        Control | Format | LineSeparator | ParagraphSeparator | PrivateUse | Unassigned | Surrogate
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str) -> Result<String, String> {
        check_new_name(NameKind::User, "username", name).map_err(|e| e.to_string())
    }

    #[test]
    fn ordinary_names_pass_in_nfc() {
        assert_eq!(user("alice").unwrap(), "alice");
        assert_eq!(user("Zoë Smith").unwrap(), "Zoë Smith");
        assert_eq!(user("李雷").unwrap(), "李雷");
        assert_eq!(user("bob2").unwrap(), "bob2");
        // "e" + combining diaeresis becomes the one precomposed character.
        assert_eq!(user("Zoe\u{308}").unwrap(), "Zo\u{eb}");
    }

    #[test]
    fn names_that_could_impersonate_are_refused() {
        for (name, why) in [
            ("", "empty"),
            (" ", "empty"),
            ("\t\n", "empty"),
            (" alice", "whitespace"),
            ("alice ", "whitespace"),
            ("al\nice", "control"),
            ("al\0ice", "control"),
            ("\u{1b}[31malice", "control"),
            ("alice\u{202e}gnp", "control"),
            ("al\u{200b}ice", "control"),
            ("al\u{2028}ice", "control"),
            ("\u{feff}alice", "control"),
            ("32", "digits"),
            ("0007", "digits"),
            ("11111111-2222-4333-8444-555555555555", "UUID"),
        ] {
            let e = user(name).expect_err(name);
            assert!(e.contains(why), "{name:?}: {e}");
        }
    }

    #[test]
    fn group_names_may_be_digits_but_not_invisible() {
        assert!(check_new_name(NameKind::Group, "name", "2024").is_ok());
        assert!(check_new_name(NameKind::Group, "name", "a\u{200d}b").is_err());
    }
}
