//! Developer commands: `cargo xtask <command>`.
//!
//! - `openapi generate`: write the OpenAPI documents in `openapi/` from the API traits.
//! - `openapi check`: fail if a checked-in document differs from what the traits generate.

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use std::path::{Path, PathBuf};

#[derive(Parser)]
#[command(about = "Halyard developer commands")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// OpenAPI documents generated from the API traits.
    Openapi {
        #[command(subcommand)]
        action: OpenapiAction,
    },
}

#[derive(Subcommand)]
enum OpenapiAction {
    /// Write every document in openapi/.
    Generate,
    /// Fail if any document in openapi/ is stale.
    Check,
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Openapi {
            action: OpenapiAction::Generate,
        } => {
            for document in xtask::openapi_documents()? {
                let path = openapi_dir().join(document.file_name);
                std::fs::write(&path, &document.contents)
                    .with_context(|| format!("writing {}", path.display()))?;
                println!("wrote {}", path.display());
            }
            Ok(())
        }
        Command::Openapi {
            action: OpenapiAction::Check,
        } => {
            let stale = xtask::stale_openapi_documents(&openapi_dir())?;
            if !stale.is_empty() {
                bail!(
                    "stale OpenAPI documents: {}; run `cargo xtask openapi generate`",
                    stale.join(", ")
                );
            }
            println!("OpenAPI documents are up to date");
            Ok(())
        }
    }
}

fn openapi_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../openapi")
}
