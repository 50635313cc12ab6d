//! The engine's folders are its products, and they depend on each other in one
//! direction only: the host and the builder never import each other, the sandbox and
//! run-pre matching import neither. A `use crate::builder` in `host/` fails here.

#![allow(clippy::unwrap_used)]

use std::path::Path;

/// What each folder of `engine/src` may import from the others (`crate::<name>`).
const ALLOWED: &[(&str, &[&str])] = &[
    ("host", &["runpre"]),
    ("builder", &["runpre", "sandbox"]),
    ("sandbox", &[]),
    ("runpre", &[]),
];

fn sources(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn products_import_each_other_in_one_direction_only() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let folders: Vec<&str> = ALLOWED.iter().map(|(f, _)| *f).collect();
    let mut found = Vec::new();
    for (folder, allowed) in ALLOWED {
        let mut files = Vec::new();
        sources(&src.join(folder), &mut files);
        assert!(!files.is_empty(), "engine/src/{folder} has no sources");
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap();
            for (n, line) in text.lines().enumerate() {
                if line.trim_start().starts_with("//") {
                    continue;
                }
                for other in &folders {
                    if other != folder
                        && !allowed.contains(other)
                        && line.contains(&format!("crate::{other}"))
                    {
                        found.push(format!(
                            "{}:{}: {folder} imports {other}: {}",
                            file.strip_prefix(&src).unwrap().display(),
                            n + 1,
                            line.trim()
                        ));
                    }
                }
            }
        }
    }
    assert!(found.is_empty(), "{}", found.join("\n"));
}
