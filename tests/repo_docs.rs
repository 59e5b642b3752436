//! The repository stands on its own, and its documents say what the code does: every
//! relative link in a Markdown file leads to a file of the repository, no document points
//! outside it, docs/PROTOCOL.md names the protocol version the code speaks, and the
//! licenses that Cargo.toml names are there.

use std::path::{Path, PathBuf};

use tidemark::node::codec::PROTOCOL_VERSION;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every Markdown file of the repository (not build output, not fuzz corpora).
fn markdown_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if path.is_dir() {
            if !matches!(name.as_str(), "target" | ".git" | "corpus" | "artifacts") {
                markdown_files(&path, out);
            }
        } else if name.ends_with(".md") {
            out.push(path);
        }
    }
}

/// The targets of the inline links `[text](target)` of `text`.
fn links(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("](") {
        rest = &rest[i + 2..];
        if let Some(end) = rest.find(')') {
            found.push(rest[..end].to_string());
        }
    }
    found
}

#[test]
fn every_relative_link_leads_to_a_file_of_the_repository() {
    let root = root().canonicalize().unwrap();
    let mut files = Vec::new();
    markdown_files(&root, &mut files);
    assert!(files.len() >= 8, "the documents are found: {files:?}");
    let mut broken = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        for link in links(&text) {
            let target = link.split('#').next().unwrap();
            if target.is_empty() || target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            let resolved = file.parent().unwrap().join(target);
            match resolved.canonicalize() {
                Ok(path) if path.starts_with(&root) => {}
                Ok(path) => broken.push(format!(
                    "{}: {link} leaves the repository ({})",
                    file.display(),
                    path.display()
                )),
                Err(_) => broken.push(format!("{}: {link} does not exist", file.display())),
            }
        }
    }
    assert!(broken.is_empty(), "{}", broken.join("\n"));
}

#[test]
fn no_document_points_outside_the_repository() {
    let root = root().canonicalize().unwrap();
    let mut files = Vec::new();
    markdown_files(&root, &mut files);
    let mut found = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap().to_lowercase();
        for (n, line) in text.lines().enumerate() {
            // any path that climbs out of its folder must land inside the repository
            for word in line.split(|c: char| c.is_whitespace() || "`()[]<>\"',".contains(c)) {
                let Some(at) = word.find("../") else { continue };
                let path = file.parent().unwrap().join(&word[at..]);
                if !lexically_inside(&path, &root) {
                    found.push(format!(
                        "{}:{}: {word} leaves the repository",
                        file.display(),
                        n + 1
                    ));
                }
            }
            if line.contains("issue #") {
                found.push(format!("{}:{}: issue #", file.display(), n + 1));
            }
            // "issue 12" and the like: a tracker's numbers mean nothing in the repository
            let words: Vec<&str> = line.split_whitespace().collect();
            for pair in words.windows(2) {
                if pair[0] == "issue"
                    && pair[1]
                        .trim_matches(|c: char| !c.is_ascii_digit())
                        .parse::<u32>()
                        .is_ok()
                {
                    found.push(format!(
                        "{}:{}: {} {}",
                        file.display(),
                        n + 1,
                        pair[0],
                        pair[1]
                    ));
                }
            }
        }
    }
    assert!(found.is_empty(), "{}", found.join("\n"));
}

/// Whether `path`, with its `..` taken literally (the target need not exist), stays under
/// `root`.
fn lexically_inside(path: &Path, root: &Path) -> bool {
    let mut parts: Vec<std::path::Component> = Vec::new();
    for part in path.components() {
        match part {
            std::path::Component::ParentDir => {
                parts.pop();
            }
            std::path::Component::CurDir => {}
            other => parts.push(other),
        }
    }
    parts.iter().collect::<PathBuf>().starts_with(root)
}

#[test]
fn the_protocol_document_names_the_version_the_code_speaks() {
    let text = std::fs::read_to_string(root().join("docs/PROTOCOL.md")).unwrap();
    let v = PROTOCOL_VERSION;
    assert!(
        text.lines()
            .next()
            .unwrap()
            .contains(&format!("(version {v})")),
        "the title says version {v}"
    );
    for name in ["/tidemark/direct/", "/tidemark/<network>/"] {
        let mut seen = 0;
        let mut rest = text.as_str();
        while let Some(i) = rest.find(name) {
            rest = &rest[i + name.len()..];
            let number: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
            assert_eq!(
                number,
                v.to_string(),
                "{name}{number} in docs/PROTOCOL.md, but the code speaks {v}"
            );
            seen += 1;
        }
        assert!(seen > 0, "docs/PROTOCOL.md names {name}{v}");
    }
}

#[test]
fn the_licenses_cargo_toml_names_are_in_the_repository() {
    let manifest = std::fs::read_to_string(root().join("Cargo.toml")).unwrap();
    assert!(manifest.contains(r#"license = "MIT OR Apache-2.0""#));
    let mit = std::fs::read_to_string(root().join("LICENSE-MIT")).unwrap();
    assert!(mit.contains("Permission is hereby granted, free of charge"));
    let apache = std::fs::read_to_string(root().join("LICENSE-APACHE")).unwrap();
    assert!(apache.contains("Apache License") && apache.contains("Version 2.0"));
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    assert!(
        readme.contains("cargo install"),
        "the README says how to install"
    );
}
