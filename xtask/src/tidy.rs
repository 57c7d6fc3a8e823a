//! Tidy checks that plain `cargo test` enforces on the whole repository:
//! every Rust file opens with a `//!` doc, every top-level directory (and
//! every crate under `crates/`) is on the map in ARCHITECTURE.md, and no
//! test is marked to be ignored.

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                rust_files(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }

    fn all_rust_files() -> Vec<PathBuf> {
        let root = crate::workspace_root();
        let mut files = Vec::new();
        for dir in ["crates", "init", "agents", "xtask", "qemu-tests"] {
            rust_files(&root.join(dir), &mut files);
        }
        files.retain(|p| !p.components().any(|c| c.as_os_str() == "target"));
        files
    }

    #[test]
    fn every_rust_file_opens_with_a_module_doc() {
        let files = all_rust_files();
        assert!(files.len() > 10, "found the sources");
        let undocumented: Vec<_> = files
            .iter()
            .filter(|p| {
                !std::fs::read_to_string(p)
                    .unwrap_or_default()
                    .starts_with("//!")
            })
            .collect();
        assert!(
            undocumented.is_empty(),
            "files without a //! doc: {undocumented:?}"
        );
    }

    #[test]
    fn every_top_level_directory_is_on_the_map() {
        let root = crate::workspace_root();
        let map = std::fs::read_to_string(root.join("ARCHITECTURE.md")).expect("ARCHITECTURE.md");
        for dir in [
            "node",
            "crates",
            "init",
            "agents",
            "image",
            "kernel-config",
            "xtask",
            "qemu-tests",
        ] {
            assert!(root.join(dir).is_dir(), "{dir}/ exists");
            assert!(
                map.contains(&format!("`{dir}/`")),
                "ARCHITECTURE.md describes {dir}/"
            );
        }
        // The shared libraries under crates/: each by its own path.
        let crates = std::fs::read_dir(root.join("crates")).expect("crates/");
        for entry in crates.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            assert!(
                map.contains(&format!("`crates/{name}/`")),
                "ARCHITECTURE.md describes crates/{name}/"
            );
        }
    }

    #[test]
    fn no_test_is_ignored() {
        let marker = ["#[", "ignore"].concat();
        let ignored: Vec<_> = all_rust_files()
            .into_iter()
            .filter(|p| {
                std::fs::read_to_string(p)
                    .unwrap_or_default()
                    .contains(&marker)
            })
            .collect();
        assert!(ignored.is_empty(), "ignored tests in {ignored:?}");
    }
}
