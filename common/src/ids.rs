//! Typed UUIDs: one Rust type per kind of object.
//!
//! Every id in Halyard is a [`TypedUuid`] tagged with its kind, so `InstanceUuid` and `VmmUuid`
//! are different types even though both are UUIDs on the wire and in the database. Mixing them
//! up is a compile error, not a bug found in production.

pub use newtype_uuid::{GenericUuid, TypedUuid, TypedUuidKind, TypedUuidTag};

/// Declares a kind marker type plus a `<Name>Uuid` alias for each kind of object.
macro_rules! uuid_kinds {
    ($($kind:ident => $tag:literal, $alias:ident;)*) => {
        $(
            #[doc = concat!("Marker for ids of kind `", $tag, "`.")]
            #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
            pub enum $kind {}

            impl TypedUuidKind for $kind {
                fn tag() -> TypedUuidTag {
                    const TAG: TypedUuidTag = TypedUuidTag::new($tag);
                    TAG
                }

                fn alias() -> Option<&'static str> {
                    Some(stringify!($alias))
                }
            }

            impl schemars::JsonSchema for $kind {
                fn schema_name() -> String {
                    stringify!($kind).to_string()
                }

                fn json_schema(
                    _: &mut schemars::r#gen::SchemaGenerator,
                ) -> schemars::schema::Schema {
                    // A kind is only a tag; it never appears on the wire by itself.
                    schemars::schema::Schema::Bool(false)
                }
            }

            #[doc = concat!("The id of a `", $tag, "`.")]
            pub type $alias = TypedUuid<$kind>;
        )*
    };
}

uuid_kinds! {
    ProjectKind => "project", ProjectUuid;
    InstanceKind => "instance", InstanceUuid;
    VmmKind => "vmm", VmmUuid;
    SledKind => "sled", SledUuid;
    MigrationKind => "migration", MigrationUuid;
    SagaKind => "saga", SagaUuid;
    NexusKind => "nexus", NexusUuid;
    SiloKind => "silo", SiloUuid;
    UserKind => "silo_user", UserUuid;
    ApiTokenKind => "api_token", ApiTokenUuid;
    DeviceAuthRequestKind => "device_auth_request", DeviceAuthRequestUuid;
    AuditLogEntryKind => "audit_log_entry", AuditLogEntryUuid;
    DiskKind => "disk", DiskUuid;
    RegionKind => "region", RegionUuid;
    SnapshotKind => "snapshot", SnapshotUuid;
    VpcKind => "vpc", VpcUuid;
    VpcSubnetKind => "vpc_subnet", VpcSubnetUuid;
    NetworkInterfaceKind => "network_interface", NetworkInterfaceUuid;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_ids_round_trip_as_plain_uuids() {
        let id = InstanceUuid::new_v4();
        let json = serde_json::to_string(&id).unwrap();
        let plain: uuid::Uuid = serde_json::from_str(&json).unwrap();
        assert_eq!(plain, id.into_untyped_uuid());
        let back: InstanceUuid = json.trim_matches('"').parse().unwrap();
        assert_eq!(back, id);
    }
}
