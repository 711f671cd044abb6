//! No crate of the workspace has an import circle between its top-level modules: module `a`
//! using `crate::b` while `b` uses `crate::a` (directly or through others) means neither can be
//! read, tested or changed alone. Checked by reading the sources: a module uses another when its
//! non-test code names `crate::other` (or an item the crate root re-exports from it, or, in a
//! file right below the root, `super::` of such an item). Test code is left out: `mod tests`
//! blocks and modules declared under `#[cfg(test)]`, which may use anything.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::Path,
};

use crate::workspace_root;

/// The crates whose `src/` is checked: every workspace member with Rust sources there, found
/// on disk so that a new crate is checked without being listed.
fn crates() -> Vec<String> {
    let mut crates: Vec<String> = fs::read_dir(workspace_root())
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().join("Cargo.toml").is_file() && e.path().join("src").is_dir())
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    crates.sort();
    crates
}

/// Top-level module of a source file, `None` for the crate root and for binaries in `bin/`.
fn top_module(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).ok()?;
    let first = rel.components().next()?.as_os_str().to_str()?;
    match first {
        "lib.rs" | "main.rs" | "bin" => None,
        f => Some(f.trim_end_matches(".rs").to_string()),
    }
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `text` without line comments, test modules and modules declared under `#[cfg(test)]`
/// (whose names are added to `test_only`).
fn non_test_code(text: &str, test_only: &mut Vec<String>) -> String {
    let mut out = String::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let code = line.split("//").next().unwrap_or_default();
        if code.trim() == "#[cfg(test)]"
            && let Some(next) = lines.peek()
        {
            let decl = next
                .trim()
                .trim_start_matches("pub(crate) ")
                .trim_start_matches("pub ");
            if let Some(name) = decl.strip_prefix("mod ") {
                let name = name.trim_end_matches([';', '{', ' ']);
                if next.trim_end().ends_with(';') {
                    test_only.push(name.to_string());
                    lines.next();
                    continue;
                }
                // A `mod name { ... }` block: skip to its closing brace.
                let mut depth = 0i32;
                for l in lines.by_ref() {
                    depth += l.matches('{').count() as i32 - l.matches('}').count() as i32;
                    if depth <= 0 && l.contains('}') {
                        break;
                    }
                }
                continue;
            }
        }
        out.push_str(code);
        out.push('\n');
    }
    out
}

/// The identifiers of a `use` tree or path right after `crate::` (or `super::`): `a` in
/// `crate::a::b`, `a` and `c` in `crate::{a::b, c}`.
fn heads(after: &str) -> Vec<String> {
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect()
    };
    if let Some(group) = after.strip_prefix('{') {
        let mut depth = 0;
        let mut out = Vec::new();
        let mut start = 0;
        for (i, c) in group.char_indices() {
            match c {
                '{' => depth += 1,
                '}' if depth == 0 => {
                    out.push(ident(group[start..i].trim()));
                    break;
                }
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    out.push(ident(group[start..i].trim()));
                    start = i + 1;
                }
                _ => {}
            }
        }
        out.retain(|h| !h.is_empty());
        out
    } else {
        vec![ident(after)]
    }
}

/// Which top-level module the crate root re-exports each name from (`pub use a::{X, Y};`).
fn root_reexports(root: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for stmt in root.split(';') {
        let Some(rest) = stmt.trim().strip_prefix("pub use ") else {
            continue;
        };
        let Some((module, items)) = rest.split_once("::") else {
            continue;
        };
        for item in items.split(|c: char| !(c.is_alphanumeric() || c == '_')) {
            if !item.is_empty() && item.chars().next().is_some_and(char::is_uppercase) {
                out.insert(item.to_string(), module.trim().to_string());
            }
        }
    }
    out
}

/// The top-level module graph of the crate whose sources are in `src`.
fn module_graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    // The files of modules declared under `#[cfg(test)]`: `x.rs` or `x/` beside the declaring
    // file when it is a crate root or a `mod.rs`, below its own directory otherwise.
    let mut test_dirs = Vec::new();
    let mut code: Vec<(std::path::PathBuf, String)> = files
        .iter()
        .map(|f| {
            let text = fs::read_to_string(f).unwrap_or_default();
            let mut test_only = Vec::new();
            let kept = non_test_code(&text, &mut test_only);
            let dir = match f.file_name().and_then(|n| n.to_str()) {
                Some("lib.rs" | "main.rs" | "mod.rs") => f.parent().map(Path::to_path_buf),
                _ => Some(f.with_extension("")),
            };
            for name in test_only {
                if let Some(dir) = &dir {
                    test_dirs.push(dir.join(&name));
                }
            }
            (f.clone(), kept)
        })
        .collect();
    code.retain(|(f, _)| {
        !test_dirs
            .iter()
            .any(|t| f.starts_with(t) || *f == t.with_extension("rs"))
    });
    let root = code
        .iter()
        .find(|(f, _)| top_module(src, f).is_none() && !f.starts_with(src.join("bin")))
        .map(|(_, c)| c.as_str())
        .unwrap_or_default();
    let reexports = root_reexports(root);
    let modules: BTreeSet<String> = code
        .iter()
        .filter_map(|(f, _)| top_module(src, f))
        .collect();
    let resolve = |head: &str| -> Option<String> {
        if modules.contains(head) {
            Some(head.to_string())
        } else {
            reexports
                .get(head)
                .filter(|m| modules.contains(*m))
                .cloned()
        }
    };
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (file, text) in &code {
        let Some(from) = top_module(src, file).filter(|m| modules.contains(m)) else {
            continue;
        };
        // `super::` in a top-level module's own file (`a.rs`, `a/mod.rs`) is the root.
        let rel: Vec<_> = file
            .strip_prefix(src)
            .map(|r| r.components().collect())
            .unwrap_or_default();
        let own_file = rel.len() == 1 || (rel.len() == 2 && file.ends_with("mod.rs"));
        let edges = graph.entry(from.clone()).or_default();
        let mut prefixes = vec!["crate::"];
        if own_file {
            prefixes.push("super::");
        }
        for prefix in prefixes {
            for (i, _) in text.match_indices(prefix) {
                let before = text[..i].chars().last();
                if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                    continue;
                }
                for head in heads(&text[i + prefix.len()..]) {
                    if let Some(to) = resolve(&head).filter(|to| *to != from) {
                        edges.insert(to);
                    }
                }
            }
        }
    }
    graph
}

/// The modules on a circle of `graph`, if there is one.
fn a_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        m: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|p| p == m) {
            let mut cycle = path[at..].to_vec();
            cycle.push(m.to_string());
            return Some(cycle);
        }
        if done.contains(m) {
            return None;
        }
        path.push(m.to_string());
        for next in graph.get(m).into_iter().flatten() {
            if let Some(c) = visit(next, graph, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(m.to_string());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|m| visit(m, graph, &mut Vec::new(), &mut done))
}

#[test]
fn no_crate_has_an_import_circle() {
    let (mut circles, mut modules, mut uses) = (Vec::new(), 0, 0);
    let crates = crates();
    // Every crate of the workspace is found, the agent's kernel side among them.
    assert!(
        crates.len() >= 12 && crates.iter().any(|c| c == "agent-ebpf"),
        "{crates:?}"
    );
    for krate in &crates {
        let src = workspace_root().join(krate).join("src");
        let graph = module_graph(&src);
        modules += graph.len();
        uses += graph.values().map(BTreeSet::len).sum::<usize>();
        if let Some(cycle) = a_cycle(&graph) {
            circles.push(format!("{krate}: {}", cycle.join(" -> ")));
        }
    }
    println!("{modules} top-level modules, {uses} uses between them");
    // The sources were read: the workspace has dozens of modules that use each other.
    assert!(modules > 50 && uses > 50, "{modules} modules, {uses} uses");
    assert!(
        circles.is_empty(),
        "import circles:\n{}",
        circles.join("\n")
    );
}

#[test]
fn a_circle_is_found() {
    let dir = std::env::temp_dir().join(format!("import-cycles-{}", std::process::id()));
    fs::create_dir_all(dir.join("b")).unwrap();
    fs::write(
        dir.join("lib.rs"),
        "mod a;\nmod b;\nmod c;\npub use c::Item;\n",
    )
    .unwrap();
    fs::write(dir.join("a.rs"), "use crate::{b::x, y};\n").unwrap();
    fs::write(dir.join("b/mod.rs"), "use super::Item;\n").unwrap();
    fs::write(
        dir.join("c.rs"),
        "pub struct Item;\nfn f() { crate::a::g() }\n",
    )
    .unwrap();
    let graph = module_graph(&dir);
    assert_eq!(graph["a"], BTreeSet::from(["b".to_string()]));
    assert_eq!(graph["b"], BTreeSet::from(["c".to_string()]));
    assert_eq!(
        a_cycle(&graph),
        Some(["a", "b", "c", "a"].map(String::from).to_vec())
    );
    // Test code does not count.
    fs::write(
        dir.join("c.rs"),
        "pub struct Item;\n#[cfg(test)]\nmod tests {\n    fn f() { crate::a::g() }\n}\n",
    )
    .unwrap();
    assert_eq!(a_cycle(&module_graph(&dir)), None);
    fs::remove_dir_all(dir).unwrap();
}
