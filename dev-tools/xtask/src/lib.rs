//! The parts of `cargo xtask` that tests also use.

use anyhow::Context;
use std::path::Path;

/// One generated OpenAPI document.
pub struct OpenapiDocument {
    pub file_name: &'static str,
    pub contents: String,
}

/// Every OpenAPI document, generated from the API traits.
pub fn openapi_documents() -> anyhow::Result<Vec<OpenapiDocument>> {
    let version = semver::Version::new(1, 0, 0);
    let sled_agent = halyard_sled_agent_api::sled_agent_api_mod::stub_api_description()
        .map_err(|e| anyhow::anyhow!("sled agent API: {e}"))?
        .openapi("Halyard Sled Agent API", version.clone())
        .json()?;
    let nexus_internal = halyard_nexus_internal_api::nexus_internal_api_mod::stub_api_description()
        .map_err(|e| anyhow::anyhow!("Nexus internal API: {e}"))?
        .openapi("Halyard Nexus Internal API", version.clone())
        .json()?;
    let nexus_external = halyard_nexus_external_api::nexus_external_api_mod::stub_api_description()
        .map_err(|e| anyhow::anyhow!("Nexus external API: {e}"))?
        .openapi("Halyard Nexus External API", version)
        .json()?;
    Ok(vec![
        OpenapiDocument {
            file_name: "sled-agent.json",
            contents: pretty(&sled_agent)?,
        },
        OpenapiDocument {
            file_name: "nexus-internal.json",
            contents: pretty(&nexus_internal)?,
        },
        OpenapiDocument {
            file_name: "nexus-external.json",
            contents: pretty(&nexus_external)?,
        },
    ])
}

fn pretty(value: &serde_json::Value) -> anyhow::Result<String> {
    Ok(serde_json::to_string_pretty(value)? + "\n")
}

/// The documents in `dir` that differ from (or are missing compared with) what the traits
/// generate.
pub fn stale_openapi_documents(dir: &Path) -> anyhow::Result<Vec<&'static str>> {
    let mut stale = Vec::new();
    for document in openapi_documents()? {
        let path = dir.join(document.file_name);
        let on_disk = match std::fs::read_to_string(&path) {
            Ok(contents) => contents,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        if on_disk != document.contents {
            stale.push(document.file_name);
        }
    }
    Ok(stale)
}

#[cfg(test)]
mod tests {
    #[test]
    fn checked_in_openapi_documents_are_current() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../openapi");
        let stale = super::stale_openapi_documents(&dir).unwrap();
        assert!(
            stale.is_empty(),
            "these OpenAPI documents are stale: {stale:?}; run `cargo xtask openapi generate` \
             and commit the result"
        );
    }
}
