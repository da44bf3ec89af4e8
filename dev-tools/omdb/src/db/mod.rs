//! `omdb db ...`: the database, read through `DataStore` (and written only by `users create`,
//! `tokens create` and `tokens revoke`). This module only parses the
//! subcommands and dispatches; its submodules depend one way: the commands ([`tables`],
//! [`disks`], [`saga`], [`check`]) on [`store`] (the connection and the lookups they share), never on
//! each other or on this module.

mod check;
mod disks;
mod identity;
mod network;
mod saga;
pub mod store;
mod tables;

use crate::Outcome;
use clap::{Args, Subcommand};
use store::Db;

#[derive(Debug, Args)]
pub struct DbArgs {
    #[command(subcommand)]
    command: DbCommand,
}

#[derive(Debug, Subcommand)]
enum DbCommand {
    /// Every live instance: its state as Nexus records it and as users see it, its VMMs,
    /// its sled.
    Instances {
        /// Deleted instances too.
        #[arg(long)]
        include_deleted: bool,
    },
    /// One instance: its record, and every VMM that ever incarnated it (oldest first) and
    /// its migrations.
    Instance {
        /// The instance's id, or its name (unique within a project).
        instance: String,
        /// The project (name or id), when the name is used in several projects.
        #[arg(long)]
        project: Option<String>,
    },
    /// VMMs: live ones (not retired), or all with --include-deleted; oldest first.
    Vmms {
        /// Only this instance's VMMs (id or name; see `omdb db instance`).
        #[arg(long)]
        instance: Option<String>,
        /// The project of --instance, when given by a name used in several projects.
        #[arg(long, requires = "instance")]
        project: Option<String>,
        /// Only VMMs on this sled (its id, or its sled agent's address).
        #[arg(long)]
        sled: Option<String>,
        /// Retired VMMs too.
        #[arg(long)]
        include_deleted: bool,
    },
    /// Sleds: capacity, what is reserved, how many live VMMs, when last seen, whether expunged.
    Sleds,
    /// Disks: project, size, block size, state, the instance they are attached to, and how
    /// many regions hold them; live ones, or all with --include-deleted.
    Disks {
        /// Deleted disks too.
        #[arg(long)]
        include_deleted: bool,
    },
    /// Regions (the replicas of disks): their disk, sled and size, oldest first.
    Regions,
    /// Network interfaces: instance, project, VPC (and its VNI), subnet, private addresses,
    /// MAC, primary, slot, and the sled their instance runs on; live ones, or all with
    /// --include-deleted.
    Nics {
        /// Deleted interfaces too.
        #[arg(long)]
        include_deleted: bool,
    },
    /// The virtual-to-physical mappings the database implies: for every interface of a
    /// running instance, its VPC's VNI, address, MAC, and the sled (and underlay address)
    /// hosting it. Every sled hosting an interface of a VPC should hold all of the VPC's
    /// (`omdb db check` compares).
    V2p,
    /// Sled reservations: what each non-terminal VMM holds on its sled.
    Reservations,
    /// Live migrations, oldest first, with each side's state.
    Migrations,
    /// Sagas in the log: unfinished and stuck ones, or all with --all; oldest first, with
    /// how each ended and the node in progress.
    Sagas {
        /// Finished sagas too.
        #[arg(long)]
        all: bool,
    },
    /// Every Nexus that has run against this database: its current process, its last
    /// heartbeat and how long it has been silent, and the unfinished sagas it owns.
    Nexus,
    /// One saga: its DAG with the state of every node, from the saga log.
    Saga {
        /// The saga's id.
        saga: String,
        /// Print the DAG in Graphviz's dot language (pipe it to `dot -Tsvg`).
        #[arg(long)]
        dot: bool,
    },
    /// Compare the database with what every sled agent reports; list the disagreements.
    /// Exits 2 if there are any.
    Check,
    /// Users of the default silo; `users create NAME` adds one (a write).
    Users {
        #[command(subcommand)]
        command: Option<UsersCommand>,
    },
    /// Who holds a role on the fleet; `fleet-roles grant|revoke USER ROLE` changes it (writes).
    FleetRoles {
        #[command(subcommand)]
        command: Option<FleetRolesCommand>,
    },
    /// API tokens (never their secrets); `tokens create` makes one and prints its secret once,
    /// `tokens revoke` ends one at once (writes).
    Tokens {
        #[command(subcommand)]
        command: Option<TokensCommand>,
    },
    /// The audit log: mutating external requests (and refused ones), newest last.
    Audit {
        /// How many of the newest entries to show.
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
}

#[derive(Debug, Subcommand)]
enum UsersCommand {
    /// Create a user in the default silo.
    Create {
        /// The user's name (lower case letters, digits and dashes, like any Halyard name).
        name: String,
        /// Also grant the user this role on the fleet (`admin` or `viewer`).
        #[arg(long)]
        fleet_role: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum FleetRolesCommand {
    /// Grant a user a role on the fleet (`admin`: everything, everywhere; `viewer`: read
    /// everything).
    Grant {
        /// The user's name.
        user: String,
        /// `admin` or `viewer`.
        role: String,
    },
    /// Take a fleet role from a user.
    Revoke {
        /// The user's name.
        user: String,
        /// `admin` or `viewer`.
        role: String,
    },
}

#[derive(Debug, Subcommand)]
enum TokensCommand {
    /// Make an API token for a user and print it (the only time it is shown).
    Create {
        /// The user's name.
        #[arg(long)]
        user: String,
        /// How long it lives (e.g. 90s, 30m, 12h, 7d); it never expires without one.
        #[arg(long)]
        ttl: Option<String>,
    },
    /// Revoke a token: every request that presents it from now on gets 401.
    Revoke {
        /// The token's id (from `omdb db tokens`).
        id: String,
    },
}

pub async fn run(args: &DbArgs, db_url: Option<&str>, json: bool) -> anyhow::Result<Outcome> {
    let db = Db::connect(db_url).await?;
    match &args.command {
        DbCommand::Instances { include_deleted } => {
            tables::cmd_instances(&db, *include_deleted, json).await?
        }
        DbCommand::Instance { instance, project } => {
            tables::cmd_instance(&db, instance, project.as_deref(), json).await?
        }
        DbCommand::Vmms {
            instance,
            project,
            sled,
            include_deleted,
        } => {
            tables::cmd_vmms(
                &db,
                instance.as_deref(),
                project.as_deref(),
                sled.as_deref(),
                *include_deleted,
                json,
            )
            .await?
        }
        DbCommand::Sleds => tables::cmd_sleds(&db, json).await?,
        DbCommand::Disks { include_deleted } => {
            disks::cmd_disks(&db, *include_deleted, json).await?
        }
        DbCommand::Regions => disks::cmd_regions(&db, json).await?,
        DbCommand::Nics { include_deleted } => {
            network::cmd_nics(&db, *include_deleted, json).await?
        }
        DbCommand::V2p => network::cmd_v2p(&db, json).await?,
        DbCommand::Reservations => tables::cmd_reservations(&db, json).await?,
        DbCommand::Migrations => tables::cmd_migrations(&db, json).await?,
        DbCommand::Sagas { all } => saga::cmd_sagas(&db, *all, json).await?,
        DbCommand::Nexus => saga::cmd_nexus(&db, json).await?,
        DbCommand::Saga { saga, dot } => saga::cmd_saga(&db, saga, *dot, json).await?,
        DbCommand::Check => return check::cmd_check(&db, json).await,
        DbCommand::Users { command: None } => identity::cmd_users(&db, json).await?,
        DbCommand::Users {
            command: Some(UsersCommand::Create { name, fleet_role }),
        } => identity::cmd_user_create(&db, name, fleet_role.as_deref(), json).await?,
        DbCommand::FleetRoles { command: None } => identity::cmd_fleet_roles(&db, json).await?,
        DbCommand::FleetRoles {
            command: Some(FleetRolesCommand::Grant { user, role }),
        } => identity::cmd_fleet_role_grant(&db, user, role, json).await?,
        DbCommand::FleetRoles {
            command: Some(FleetRolesCommand::Revoke { user, role }),
        } => identity::cmd_fleet_role_revoke(&db, user, role, json).await?,
        DbCommand::Tokens { command: None } => identity::cmd_tokens(&db, json).await?,
        DbCommand::Tokens {
            command: Some(TokensCommand::Create { user, ttl }),
        } => identity::cmd_token_create(&db, user, ttl.as_deref(), json).await?,
        DbCommand::Tokens {
            command: Some(TokensCommand::Revoke { id }),
        } => identity::cmd_token_revoke(&db, id, json).await?,
        DbCommand::Audit { limit } => identity::cmd_audit(&db, *limit, json).await?,
    }
    Ok(Outcome::Ok)
}
