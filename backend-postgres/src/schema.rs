//! The schema name: validated once, then only ever spliced into SQL quoted.

use std::fmt;

/// A Postgres schema for Weir's tables: 1–48 characters of `[a-z0-9_]`,
/// starting with a letter or `_`, and not starting with `pg_`.
///
/// The alphabet is narrower than Postgres allows on purpose: the name is
/// spliced (quoted) into every statement and into the NOTIFY channel name,
/// and a name that never needs escaping cannot be used for injection. The
/// length leaves room for the `weir_` channel prefix within Postgres's
/// 63-byte identifier limit.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SchemaName(String);

/// A schema name that was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid schema name {name:?}: {why}")]
pub struct InvalidSchemaName {
    name: String,
    why: &'static str,
}

impl SchemaName {
    /// The longest name accepted, in bytes.
    pub const MAX_LEN: usize = 48;

    /// Validates `name`.
    pub fn new(name: impl Into<String>) -> Result<SchemaName, InvalidSchemaName> {
        let name = name.into();
        let refuse = |why| {
            Err(InvalidSchemaName {
                name: name.clone(),
                why,
            })
        };
        if name.is_empty() {
            return refuse("it is empty");
        }
        if name.len() > Self::MAX_LEN {
            return refuse("it is longer than 48 bytes");
        }
        if !name
            .chars()
            .all(|ch| matches!(ch, 'a'..='z' | '0'..='9' | '_'))
        {
            return refuse("only [a-z0-9_] are allowed");
        }
        if name.starts_with(|ch: char| ch.is_ascii_digit()) {
            return refuse("it must not start with a digit");
        }
        if name.starts_with("pg_") {
            return refuse("names starting with pg_ are reserved by Postgres");
        }
        Ok(SchemaName(name))
    }

    /// The name, unquoted.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name as a quoted SQL identifier (`"weir"`). The alphabet has no
    /// quote character, so quoting needs no escaping.
    pub fn quoted(&self) -> String {
        format!("\"{}\"", self.0)
    }

    /// The NOTIFY channel of this schema (`weir_<schema>`).
    pub fn channel(&self) -> String {
        format!("weir_{}", self.0)
    }
}

impl Default for SchemaName {
    fn default() -> SchemaName {
        SchemaName("weir".to_string())
    }
}

impl fmt::Display for SchemaName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for SchemaName {
    type Err = InvalidSchemaName;
    fn from_str(s: &str) -> Result<SchemaName, InvalidSchemaName> {
        SchemaName::new(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_lower_case_names_pass() {
        assert_eq!(SchemaName::new("weir").unwrap().quoted(), "\"weir\"");
        assert!(SchemaName::new("_w2").is_ok());
        for bad in [
            "",
            "Weir",
            "2weir",
            "pg_weir",
            "we ir",
            "we\"ir",
            "weir; drop table x",
            "ü",
        ] {
            assert!(SchemaName::new(bad).is_err(), "{bad:?}");
        }
        assert!(SchemaName::new("a".repeat(48)).is_ok());
        assert!(SchemaName::new("a".repeat(49)).is_err());
    }
}
