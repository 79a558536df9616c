//! The crates' modules depend one way: a `crate::` import cycle among the top-level modules of
//! coordinator/src or worker/src fails here, naming the cycle. (A module's own submodules and
//! their `super::` imports are part of it.)

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Top-level module -> the top-level modules its files name as `crate::x`.
fn imports(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut files = Vec::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                files.push(p);
            }
        }
    }
    for f in files {
        let rel = f.strip_prefix(src).unwrap();
        let top = rel.components().next().unwrap().as_os_str().to_string_lossy().trim_end_matches(".rs").to_string();
        if top == "lib" || top == "main" || top == "bin" {
            continue; // the roots declare every module; nothing imports them
        }
        let text = std::fs::read_to_string(&f).unwrap();
        let deps = graph.entry(top.clone()).or_default();
        for (i, _) in text.match_indices("crate::") {
            let name: String = text[i + 7..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
            if !name.is_empty() && name != top {
                deps.insert(name);
            }
        }
        // `use crate::{a, b::c}` names several.
        for (i, _) in text.match_indices("crate::{") {
            let inner: String = text[i + 8..].chars().take_while(|c| *c != '}').collect();
            for part in inner.split(',') {
                let name: String = part.trim().chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                if !name.is_empty() && name != top {
                    deps.insert(name);
                }
            }
        }
    }
    graph
}

/// A cycle of the graph, if it has one (depth-first search, grey/black marking).
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(n: &str, g: &BTreeMap<String, BTreeSet<String>>, path: &mut Vec<String>, done: &mut BTreeSet<String>) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|p| p == n) {
            let mut cycle = path[at..].to_vec();
            cycle.push(n.to_string());
            return Some(cycle);
        }
        if done.contains(n) {
            return None;
        }
        path.push(n.to_string());
        for m in g.get(n).into_iter().flatten() {
            if let Some(c) = visit(m, g, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(n.to_string());
        None
    }
    let mut done = BTreeSet::new();
    for n in graph.keys() {
        if let Some(c) = visit(n, graph, &mut Vec::new(), &mut done) {
            return Some(c);
        }
    }
    None
}

#[test]
fn the_cycle_finder_finds_cycles() {
    let g = |edges: &[(&str, &str)]| {
        let mut m: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (a, b) in edges {
            m.entry(a.to_string()).or_default().insert(b.to_string());
        }
        m
    };
    assert_eq!(find_cycle(&g(&[("app", "trainer"), ("trainer", "cluster"), ("app", "cluster")])), None);
    let c = find_cycle(&g(&[("app", "trainer"), ("trainer", "report"), ("report", "app")])).unwrap();
    assert_eq!(c.first(), c.last());
    assert_eq!(c.len(), 4, "{c:?}");
}

#[test]
fn coordinator_and_worker_modules_depend_one_way() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for krate in ["coordinator", "worker", "spec", "net"] {
        let g = imports(&root.join(krate).join("src"));
        assert!(g.len() > 1 || krate != "coordinator", "no modules found in {krate}/src");
        if let Some(c) = find_cycle(&g) {
            panic!("{krate}/src has an import cycle: {}", c.join(" -> "));
        }
    }
}
