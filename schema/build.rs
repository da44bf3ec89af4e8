//! Embeds every `migrations/<version>/up*.sql` step into the crate, in order, so a schema
//! change is one new folder of SQL files and nothing to register by hand.

use std::fs;
use std::path::Path;

fn main() {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let migrations = Path::new(&manifest_dir).join("migrations");
    println!("cargo:rerun-if-changed={}", migrations.display());
    println!("cargo:rerun-if-changed=dbinit.sql");

    let mut versions = Vec::new();
    for entry in fs::read_dir(&migrations).expect("schema/migrations exists") {
        let entry = entry.expect("readable migrations directory");
        let name = entry
            .file_name()
            .into_string()
            .expect("UTF-8 version directory name");
        println!("cargo:rerun-if-changed={}", entry.path().display());
        let mut steps: Vec<String> = fs::read_dir(entry.path())
            .expect("readable version directory")
            .map(|step| {
                step.expect("readable step")
                    .file_name()
                    .into_string()
                    .expect("UTF-8")
            })
            .filter(|file| file.starts_with("up") && file.ends_with(".sql"))
            .collect();
        // up01.sql, up02.sql, ...: zero-padded, so lexical order is step order.
        steps.sort();
        versions.push((name, steps));
    }

    let mut out = String::from("&[\n");
    for (version, steps) in &versions {
        out.push_str(&format!(
            "    RawMigration {{ version: {version:?}, steps: &[\n"
        ));
        for step in steps {
            let path = migrations.join(version).join(step);
            out.push_str(&format!(
                "        RawStep {{ file: {step:?}, sql: include_str!({:?}) }},\n",
                path.display().to_string()
            ));
        }
        out.push_str("    ] },\n");
    }
    out.push_str("]\n");
    let out_dir = std::env::var("OUT_DIR").expect("cargo sets OUT_DIR");
    fs::write(Path::new(&out_dir).join("migrations.rs"), out).expect("writable OUT_DIR");
}
