//! The READMEs stay true to the code: every snippet is the file the SDK suite runs, and
//! every environment variable the configuration reads is documented in both languages.

use std::collections::BTreeSet;

fn read(path: &str) -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/").to_string() + path)
        .unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// `(name, code)` of every fenced block right after `<!-- snippet: name -->`.
fn snippets(readme: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut lines = readme.lines();
    while let Some(line) = lines.next() {
        let Some(name) = line
            .trim()
            .strip_prefix("<!-- snippet: ")
            .and_then(|r| r.strip_suffix(" -->"))
        else {
            continue;
        };
        let fence = lines.next().expect("a code block follows the marker");
        assert!(
            fence.starts_with("```"),
            "{name}: expected a code fence, got {fence}"
        );
        let code: Vec<&str> = lines
            .by_ref()
            .take_while(|l| !l.starts_with("```"))
            .collect();
        out.push((name.to_string(), code.join("\n") + "\n"));
    }
    out
}

#[test]
fn readme_snippets_are_the_tested_files() {
    for readme in ["README.md", "README_CN.md"] {
        let found = snippets(&read(readme));
        let names: BTreeSet<_> = found.iter().map(|(n, _)| n.clone()).collect();
        let files: BTreeSet<_> =
            std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sdk/snippets"))
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
        assert_eq!(
            names, files,
            "{readme} shows every snippet the SDK suite runs"
        );
        for (name, code) in found {
            assert_eq!(
                code,
                read(&format!("tests/sdk/snippets/{name}")),
                "{readme}: snippet {name} differs from the tested file"
            );
        }
    }
}

#[test]
fn every_environment_variable_is_documented() {
    let source = read("src/config.rs");
    let vars: BTreeSet<String> = source
        .split('"')
        .skip(1)
        .step_by(2)
        .filter(|s| {
            s.len() > 3 && s.bytes().all(|b| b.is_ascii_uppercase() || b == b'_') && s.contains('_')
        })
        .map(str::to_string)
        .collect();
    assert!(vars.len() > 25, "{vars:?}");
    for readme in ["README.md", "README_CN.md"] {
        let text = read(readme);
        for v in &vars {
            assert!(
                text.contains(&format!("`{v}`")),
                "{readme} does not document {v}"
            );
        }
    }
}
