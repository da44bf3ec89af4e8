//! Enums that are stored and sent as short snake_case labels.

/// An enum with a fixed set of values, each with a stable text label used on the wire and in
/// the database. The labels are part of the schema: never rename one without a migration.
pub trait Labelled: Sized + Copy + 'static {
    /// Every value, in declaration order.
    const ALL: &'static [Self];
    /// The name of the enum, for error messages.
    const WHAT: &'static str;

    fn label(&self) -> &'static str;

    fn from_label(label: &str) -> Result<Self, UnknownLabel> {
        Self::ALL
            .iter()
            .copied()
            .find(|v| v.label() == label)
            .ok_or_else(|| UnknownLabel {
                what: Self::WHAT,
                label: label.to_string(),
            })
    }
}

/// A label that names no value of the enum.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what}: {label:?}")]
pub struct UnknownLabel {
    pub what: &'static str,
    pub label: String,
}

/// Declares a `Labelled` enum with serde, JSON schema, `Display` and `FromStr` that all agree
/// on the same snake_case labels. The using crate needs `serde` and `schemars`.
#[macro_export]
macro_rules! labelled_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident => $label:literal, )*
        }
    ) => {
        $(#[$meta])*
        #[derive(
            Debug, Clone, Copy, PartialEq, Eq, Hash,
            serde::Serialize, serde::Deserialize, schemars::JsonSchema,
        )]
        #[serde(rename_all = "snake_case")]
        pub enum $name {
            $( $(#[$vmeta])* #[serde(rename = $label)] $variant, )*
        }

        impl $crate::Labelled for $name {
            const ALL: &'static [Self] = &[$(Self::$variant),*];
            const WHAT: &'static str = stringify!($name);

            fn label(&self) -> &'static str {
                match self {
                    $(Self::$variant => $label,)*
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str($crate::Labelled::label(self))
            }
        }

        impl std::str::FromStr for $name {
            type Err = $crate::UnknownLabel;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                <Self as $crate::Labelled>::from_label(s)
            }
        }
    };
}
