//! The licence the crates declare is the licence the repository ships: every package of every
//! Cargo workspace here (the main one and fuzz/'s) says `MIT OR Apache-2.0`, as cargo resolves
//! it (`license.workspace = true` included), and both texts are at the repository's root.
//! A package no workspace lists would escape cargo's view, so every `Cargo.toml` with a
//! `[package]` is found on disk and must be one cargo answered for. No root needed.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
};

const LICENSE: &str = "MIT OR Apache-2.0";

fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().canonicalize().unwrap()
}

/// Each package of the workspace at `dir`, as cargo resolves it: (manifest, licence).
fn packages(dir: &Path) -> Vec<(PathBuf, Option<String>)> {
    let out = Command::new(env!("CARGO"))
        .current_dir(dir)
        .args(["metadata", "--format-version", "1", "--no-deps", "--offline"])
        .output()
        .expect("running cargo metadata");
    assert!(
        out.status.success(),
        "cargo metadata in {}: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let metadata: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    metadata["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let manifest = PathBuf::from(p["manifest_path"].as_str().unwrap()).canonicalize().unwrap();
            (manifest, p["license"].as_str().map(str::to_owned))
        })
        .collect()
}

/// Every `Cargo.toml` under `dir` that declares a package, outside build output and git.
fn package_manifests(dir: &Path, found: &mut BTreeSet<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().map(Result::unwrap) {
        let path = entry.path();
        let name = entry.file_name();
        if entry.file_type().unwrap().is_dir() {
            if name != "target" && name != ".git" {
                package_manifests(&path, found);
            }
        } else if name == "Cargo.toml"
            && std::fs::read_to_string(&path).unwrap().lines().any(|l| l.trim() == "[package]")
        {
            found.insert(path.canonicalize().unwrap());
        }
    }
}

#[test]
fn every_package_is_mit_or_apache_and_both_texts_are_shipped() {
    let root = repository();
    let mut declared = BTreeSet::new();
    for workspace in [root.clone(), root.join("fuzz")] {
        for (manifest, license) in packages(&workspace) {
            assert_eq!(license.as_deref(), Some(LICENSE), "{}", manifest.display());
            declared.insert(manifest);
        }
    }
    let mut on_disk = BTreeSet::new();
    package_manifests(&root, &mut on_disk);
    assert_eq!(declared, on_disk, "a package outside the workspaces checked");
    assert!(declared.len() >= 7, "{declared:?}");

    let apache = std::fs::read_to_string(root.join("LICENSE-APACHE")).expect("LICENSE-APACHE at the root");
    for part in [
        "Apache License\n                        Version 2.0, January 2004",
        "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION",
        "9. Accepting Warranty or Additional Liability.",
        "END OF TERMS AND CONDITIONS",
    ] {
        assert!(apache.contains(part), "LICENSE-APACHE lacks {part:?}");
    }
    let mit = std::fs::read_to_string(root.join("LICENSE-MIT")).expect("LICENSE-MIT at the root");
    assert!(mit.starts_with("Copyright (c) 2026 The otel-sendmmsg authors\n"), "{mit}");
    for part in ["Permission is hereby granted, free of charge", "THE SOFTWARE IS PROVIDED \"AS IS\""] {
        assert!(mit.contains(part), "LICENSE-MIT lacks {part:?}");
    }
}
