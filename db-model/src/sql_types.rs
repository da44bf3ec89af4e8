//! How `halyard-common` types map to SQL columns.
//!
//! The orphan rule stops us implementing diesel's traits for `halyard-common` types directly,
//! so each gets a thin wrapper here. A value read from the database that does not satisfy its
//! type's rules (a negative size, an unknown state label) is a deserialization error, which the
//! datastore reports as a typed error; it never panics.

use diesel::deserialize::{self, FromSql, FromSqlRow};
use diesel::expression::AsExpression;
use diesel::pg::{Pg, PgValue};
use diesel::serialize::{self, Output, ToSql};
use diesel::sql_types;
use halyard_common::ids::{GenericUuid, TypedUuid, TypedUuidKind};
use halyard_common::{ByteCount, Generation, Labelled, Name};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

/// A typed UUID in a `UUID` column.
#[derive(AsExpression, FromSqlRow)]
#[diesel(sql_type = sql_types::Uuid)]
pub struct DbTypedUuid<K: TypedUuidKind>(pub TypedUuid<K>);

// Derives would demand `K: Clone` etc. of the uninhabited kind marker; implement by hand.
impl<K: TypedUuidKind> Clone for DbTypedUuid<K> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<K: TypedUuidKind> Copy for DbTypedUuid<K> {}
impl<K: TypedUuidKind> PartialEq for DbTypedUuid<K> {
    fn eq(&self, other: &Self) -> bool {
        self.0 == other.0
    }
}
impl<K: TypedUuidKind> Eq for DbTypedUuid<K> {}
impl<K: TypedUuidKind> fmt::Debug for DbTypedUuid<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

// Serialized as the id itself (a row in a saga's node output: see `Instance`).
impl<K: TypedUuidKind> Serialize for DbTypedUuid<K> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}
impl<'de, K: TypedUuidKind> Deserialize<'de> for DbTypedUuid<K> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        TypedUuid::<K>::deserialize(deserializer).map(DbTypedUuid)
    }
}

impl<K: TypedUuidKind> From<TypedUuid<K>> for DbTypedUuid<K> {
    fn from(id: TypedUuid<K>) -> Self {
        DbTypedUuid(id)
    }
}

impl<K: TypedUuidKind> From<DbTypedUuid<K>> for TypedUuid<K> {
    fn from(id: DbTypedUuid<K>) -> Self {
        id.0
    }
}

impl<K: TypedUuidKind> ToSql<sql_types::Uuid, Pg> for DbTypedUuid<K> {
    fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, Pg>) -> serialize::Result {
        let untyped = self.0.into_untyped_uuid();
        <uuid::Uuid as ToSql<sql_types::Uuid, Pg>>::to_sql(&untyped, &mut out.reborrow())
    }
}

impl<K: TypedUuidKind> FromSql<sql_types::Uuid, Pg> for DbTypedUuid<K> {
    fn from_sql(bytes: PgValue<'_>) -> deserialize::Result<Self> {
        let untyped = <uuid::Uuid as FromSql<sql_types::Uuid, Pg>>::from_sql(bytes)?;
        Ok(DbTypedUuid(TypedUuid::from_untyped_uuid(untyped)))
    }
}

/// A [`Labelled`] enum in a `TEXT` column with a `CHECK` listing its labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, AsExpression, FromSqlRow)]
#[diesel(sql_type = sql_types::Text)]
pub struct DbEnum<T: Labelled + fmt::Debug>(pub T);

// Serialized as its label, the same text as in its column.
impl<T: Labelled + fmt::Debug> Serialize for DbEnum<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.0.label())
    }
}
impl<'de, T: Labelled + fmt::Debug> Deserialize<'de> for DbEnum<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let label = String::deserialize(deserializer)?;
        T::from_label(&label)
            .map(DbEnum)
            .map_err(serde::de::Error::custom)
    }
}

impl<T: Labelled + fmt::Debug> From<T> for DbEnum<T> {
    fn from(value: T) -> Self {
        DbEnum(value)
    }
}

impl<T: Labelled + fmt::Debug> ToSql<sql_types::Text, Pg> for DbEnum<T> {
    fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, Pg>) -> serialize::Result {
        <str as ToSql<sql_types::Text, Pg>>::to_sql(self.0.label(), &mut out.reborrow())
    }
}

impl<T: Labelled + fmt::Debug> FromSql<sql_types::Text, Pg> for DbEnum<T> {
    fn from_sql(bytes: PgValue<'_>) -> deserialize::Result<Self> {
        let label = <String as FromSql<sql_types::Text, Pg>>::from_sql(bytes)?;
        Ok(DbEnum(T::from_label(&label)?))
    }
}

/// A [`Generation`] in an `INT8` column.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    AsExpression,
    FromSqlRow,
    Serialize,
    Deserialize,
)]
#[serde(transparent)]
#[diesel(sql_type = sql_types::BigInt)]
pub struct DbGeneration(pub Generation);

impl From<Generation> for DbGeneration {
    fn from(g: Generation) -> Self {
        DbGeneration(g)
    }
}

impl ToSql<sql_types::BigInt, Pg> for DbGeneration {
    fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, Pg>) -> serialize::Result {
        let value = self.0.as_i64();
        <i64 as ToSql<sql_types::BigInt, Pg>>::to_sql(&value, &mut out.reborrow())
    }
}

impl FromSql<sql_types::BigInt, Pg> for DbGeneration {
    fn from_sql(bytes: PgValue<'_>) -> deserialize::Result<Self> {
        let value = <i64 as FromSql<sql_types::BigInt, Pg>>::from_sql(bytes)?;
        Ok(DbGeneration(Generation::try_from(value)?))
    }
}

/// A [`ByteCount`] in an `INT8` column.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    AsExpression,
    FromSqlRow,
    Serialize,
    Deserialize,
)]
#[serde(transparent)]
#[diesel(sql_type = sql_types::BigInt)]
pub struct DbByteCount(pub ByteCount);

impl From<ByteCount> for DbByteCount {
    fn from(b: ByteCount) -> Self {
        DbByteCount(b)
    }
}

impl ToSql<sql_types::BigInt, Pg> for DbByteCount {
    fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, Pg>) -> serialize::Result {
        let value = self.0.to_i64();
        <i64 as ToSql<sql_types::BigInt, Pg>>::to_sql(&value, &mut out.reborrow())
    }
}

impl FromSql<sql_types::BigInt, Pg> for DbByteCount {
    fn from_sql(bytes: PgValue<'_>) -> deserialize::Result<Self> {
        let value = <i64 as FromSql<sql_types::BigInt, Pg>>::from_sql(bytes)?;
        Ok(DbByteCount(ByteCount::try_from(value)?))
    }
}

/// A [`Name`] in a `TEXT` column.
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, AsExpression, FromSqlRow, Serialize, Deserialize,
)]
#[serde(transparent)]
#[diesel(sql_type = sql_types::Text)]
pub struct DbName(pub Name);

impl From<Name> for DbName {
    fn from(name: Name) -> Self {
        DbName(name)
    }
}

impl ToSql<sql_types::Text, Pg> for DbName {
    fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, Pg>) -> serialize::Result {
        <str as ToSql<sql_types::Text, Pg>>::to_sql(self.0.as_str(), &mut out.reborrow())
    }
}

impl FromSql<sql_types::Text, Pg> for DbName {
    fn from_sql(bytes: PgValue<'_>) -> deserialize::Result<Self> {
        let text = <String as FromSql<sql_types::Text, Pg>>::from_sql(bytes)?;
        Ok(DbName(Name::try_from(text)?))
    }
}
