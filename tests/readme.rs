//! The READMEs stay true to the code: every snippet is the file the SDK suite runs, and
//! every environment variable the configuration reads is documented in both languages.
//! Every relative link of the READMEs and docs/ names a file that exists.

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
    // Each README shows the snippets, with a few more in docs/EXAMPLES.md: together, every
    // file the SDK suite runs, each once, exactly as it is.
    let files: BTreeSet<_> =
        std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sdk/snippets"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
    for readme in ["README.md", "README_CN.md"] {
        let mut found = snippets(&read(readme));
        found.extend(snippets(&read("docs/EXAMPLES.md")));
        let names: Vec<_> = found.iter().map(|(n, _)| n.clone()).collect();
        let unique: BTreeSet<_> = names.iter().cloned().collect();
        assert_eq!(names.len(), unique.len(), "{readme}: a snippet shown twice");
        assert_eq!(
            unique, files,
            "{readme} and docs/EXAMPLES.md show every snippet the SDK suite runs"
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
    // The default LLM error codes are strings of the same shape, not variables.
    let codes = source
        .split("DEFAULT_INVALID_KEY_CODES: &[&str] = &[")
        .nth(1)
        .and_then(|rest| rest.split("];").next())
        .unwrap_or("");
    let source = source.replace(codes, "");
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
    // The READMEs show the main ones; docs/CONFIGURATION*.md every one, in each language.
    for doc in ["docs/CONFIGURATION.md", "docs/CONFIGURATION_CN.md"] {
        let text = read(doc);
        for v in &vars {
            assert!(
                text.contains(&format!("`{v}`")),
                "{doc} does not document {v}"
            );
        }
    }
    for readme in ["README.md", "README_CN.md"] {
        let text = read(readme);
        for v in [
            "ADMIN_PASSWORD",
            "JWT_SECRET",
            "GLOBAL_PROXY_KEYS",
            "DATABASE_URL",
        ] {
            assert!(
                text.contains(&format!("`{v}`")),
                "{readme} does not show {v}"
            );
        }
        let link = if readme == "README.md" {
            "docs/CONFIGURATION.md"
        } else {
            "docs/CONFIGURATION_CN.md"
        };
        assert!(text.contains(link), "{readme} links {link}");
    }
}

#[test]
fn relative_links_name_files_that_exist() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut docs: Vec<std::path::PathBuf> = vec![root.join("README.md"), root.join("README_CN.md")];
    for e in std::fs::read_dir(root.join("docs")).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "md") {
            docs.push(p);
        }
    }
    for doc in docs {
        let text = std::fs::read_to_string(&doc).unwrap();
        for target in text.split("](").skip(1).filter_map(|t| t.split(')').next()) {
            if target.starts_with("http") || target.starts_with('#') || target.starts_with('<') {
                continue;
            }
            let path = target.split('#').next().unwrap();
            let file = doc.parent().unwrap().join(path);
            assert!(
                file.exists(),
                "{}: link to {target} is broken",
                doc.display()
            );
        }
    }
}
