//! User-facing names, with Oxide's rules.

use schemars::JsonSchema;
use schemars::r#gen::SchemaGenerator;
use schemars::schema::{
    InstanceType, Metadata, Schema, SchemaObject, StringValidation, SubschemaValidation,
};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;
use uuid::Uuid;

/// The longest name allowed.
const MAX_NAME_LEN: usize = 63;

/// The name of a user-visible object (project, instance, ...).
///
/// Names start with a lowercase ASCII letter, contain only lowercase letters, digits and `-`,
/// do not end with `-`, are at most 63 characters long, and are never themselves a UUID (so a
/// path segment that parses as a UUID is always an id, never a name).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Name(String);

/// Why a string is not a valid [`Name`]. The message tells the user what a name may be.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("name must not be empty")]
    Empty,
    #[error("name {0:?} is longer than {MAX_NAME_LEN} characters")]
    TooLong(String),
    #[error("name {0:?} must begin with a lowercase ASCII letter")]
    BadFirstCharacter(String),
    #[error("name {0:?} may contain only lowercase ASCII letters, digits and \"-\"")]
    BadCharacter(String),
    #[error("name {0:?} must not end with \"-\"")]
    TrailingHyphen(String),
    #[error("name {0:?} looks like a UUID; names cannot be UUIDs")]
    LooksLikeUuid(String),
}

impl Name {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Name {
    type Error = NameError;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        let Some(first) = value.chars().next() else {
            return Err(NameError::Empty);
        };
        if value.len() > MAX_NAME_LEN {
            return Err(NameError::TooLong(value));
        }
        if !first.is_ascii_lowercase() {
            return Err(NameError::BadFirstCharacter(value));
        }
        if !value
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        {
            return Err(NameError::BadCharacter(value));
        }
        if value.ends_with('-') {
            return Err(NameError::TrailingHyphen(value));
        }
        if Uuid::parse_str(&value).is_ok() {
            return Err(NameError::LooksLikeUuid(value));
        }
        Ok(Name(value))
    }
}

impl FromStr for Name {
    type Err = NameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Name::try_from(s.to_string())
    }
}

impl From<Name> for String {
    fn from(name: Name) -> String {
        name.0
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl JsonSchema for Name {
    fn schema_name() -> String {
        "Name".to_string()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        SchemaObject {
            metadata: Some(Box::new(schemars::schema::Metadata {
                title: Some("A name unique within the parent collection".to_string()),
                description: Some(
                    "Names must begin with a lowercase ASCII letter, be composed exclusively of \
                     lowercase ASCII letters, digits, and '-', and may not end with a '-'. \
                     Names cannot be a UUID, but they may contain a UUID. They can be at most \
                     63 characters long."
                        .to_string(),
                ),
                ..Default::default()
            })),
            instance_type: Some(InstanceType::String.into()),
            string: Some(Box::new(StringValidation {
                max_length: Some(MAX_NAME_LEN as u32),
                min_length: Some(1),
                pattern: Some(
                    "^(?![0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$)\
                     ^[a-z]([a-z0-9-]*[a-z0-9])?$"
                        .to_string(),
                ),
            })),
            ..Default::default()
        }
        .into()
    }
}

/// A reference to an object by its name or its id, as API paths and selectors accept.
///
/// A string that parses as a UUID is an id; anything else must be a valid name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum NameOrId {
    Id(Uuid),
    Name(Name),
}

/// On the wire a `NameOrId` is one string: Oxide's schema, a UUID or a [`Name`] (dropshot
/// needs a scalar schema for path and query parameters).
impl JsonSchema for NameOrId {
    fn schema_name() -> String {
        "NameOrId".to_string()
    }

    fn json_schema(r#gen: &mut SchemaGenerator) -> Schema {
        fn titled(title: &str, schema: Schema) -> Schema {
            SchemaObject {
                metadata: Some(Box::new(Metadata {
                    title: Some(title.to_string()),
                    ..Default::default()
                })),
                subschemas: Some(Box::new(SubschemaValidation {
                    all_of: Some(vec![schema]),
                    ..Default::default()
                })),
                ..Default::default()
            }
            .into()
        }
        SchemaObject {
            metadata: Some(Box::new(Metadata {
                description: Some(
                    "A reference to an object by its name or its id: a string that parses as \
                     a UUID is an id; anything else must be a valid name."
                        .to_string(),
                ),
                ..Default::default()
            })),
            subschemas: Some(Box::new(SubschemaValidation {
                one_of: Some(vec![
                    titled("id", r#gen.subschema_for::<Uuid>()),
                    titled("name", r#gen.subschema_for::<Name>()),
                ]),
                ..Default::default()
            })),
            ..Default::default()
        }
        .into()
    }
}

impl TryFrom<String> for NameOrId {
    type Error = NameError;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        match Uuid::parse_str(&value) {
            Ok(id) => Ok(NameOrId::Id(id)),
            Err(_) => Name::try_from(value).map(NameOrId::Name),
        }
    }
}

impl FromStr for NameOrId {
    type Err = NameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        NameOrId::try_from(s.to_string())
    }
}

/// So that clients can say `.project("demo")`.
impl TryFrom<&str> for NameOrId {
    type Error = NameError;

    fn try_from(s: &str) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<NameOrId> for String {
    fn from(value: NameOrId) -> String {
        value.to_string()
    }
}

impl From<Name> for NameOrId {
    fn from(name: Name) -> Self {
        NameOrId::Name(name)
    }
}

impl From<Uuid> for NameOrId {
    fn from(id: Uuid) -> Self {
        NameOrId::Id(id)
    }
}

impl fmt::Display for NameOrId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NameOrId::Id(id) => write!(f, "{id}"),
            NameOrId::Name(name) => write!(f, "{name}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_names_are_accepted() {
        for ok in [
            "a",
            "web-1",
            "x0",
            &"a".repeat(63),
            "a-b-c",
            "abc-123e4567-e89b-12d3-a456-426614174000",
        ] {
            assert_eq!(Name::try_from(ok.to_string()).unwrap().as_str(), ok);
        }
    }

    #[test]
    fn invalid_names_say_why() {
        type IsExpected = fn(&NameError) -> bool;
        let cases: &[(&str, IsExpected)] = &[
            ("", |e| matches!(e, NameError::Empty)),
            ("1abc", |e| matches!(e, NameError::BadFirstCharacter(_))),
            ("-abc", |e| matches!(e, NameError::BadFirstCharacter(_))),
            ("Abc", |e| matches!(e, NameError::BadFirstCharacter(_))),
            ("aBc", |e| matches!(e, NameError::BadCharacter(_))),
            ("a_b", |e| matches!(e, NameError::BadCharacter(_))),
            ("a b", |e| matches!(e, NameError::BadCharacter(_))),
            ("abc-", |e| matches!(e, NameError::TrailingHyphen(_))),
            ("é", |e| matches!(e, NameError::BadFirstCharacter(_))),
            ("aé", |e| matches!(e, NameError::BadCharacter(_))),
            ("deadbeef-0000-4000-8000-000000000000", |e| {
                matches!(e, NameError::LooksLikeUuid(_))
            }),
        ];
        for (input, check) in cases {
            let err = Name::try_from(input.to_string()).unwrap_err();
            assert!(check(&err), "{input:?} gave {err:?}");
            assert!(!err.to_string().is_empty());
        }
        let long = "a".repeat(64);
        assert!(matches!(
            Name::try_from(long).unwrap_err(),
            NameError::TooLong(_)
        ));
        assert!(serde_json::from_str::<Name>("\"Bad\"").is_err());
    }

    #[test]
    fn name_or_id_prefers_ids() {
        let id = Uuid::new_v4();
        assert_eq!(
            id.to_string().parse::<NameOrId>().unwrap(),
            NameOrId::Id(id)
        );
        assert_eq!(
            "web".parse::<NameOrId>().unwrap(),
            NameOrId::Name("web".parse().unwrap())
        );
        assert!("Not-A-Name".parse::<NameOrId>().is_err());
        let json = serde_json::to_string(&NameOrId::Id(id)).unwrap();
        assert_eq!(json, format!("\"{id}\""));
    }
}
