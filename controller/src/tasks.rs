//! The standalone backend's task source: one task (NetReach, AppHttpHealthy or NetDns) per
//! `*.yaml` / `*.yml` file in a directory. An invalid file is kept as an error entry (shown by
//! `GET /v1/tasks`) instead of aborting the controller, so one typo does not stop every other
//! task.
//!
//! The directory is re-read while the controller runs ([`crate::rounds::Controller::sync_tasks`]
//! applies the result): a new file starts a task, a file whose task changed restarts it, a
//! removed file stops it. Task names are unique across kinds, because reports are stored and
//! served by name.

use meshdoctor_api::TaskSpec as _;
use std::{collections::HashMap, io, path::Path, sync::Arc};

use meshdoctor_api::Task;

/// One task file and what came of parsing it.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskFile {
    pub file: String,
    /// The task name, or the file stem when the file is invalid.
    pub name: String,
    /// The task, or the error (`file: field: reason`). Two files are the same task when they
    /// parse to the same task: comments and formatting do not count.
    pub task: Result<Arc<Task>, String>,
}

/// Reads every task file of `dir`, sorted by file name. Fails only when the directory itself
/// cannot be read.
pub fn load_dir(dir: &Path) -> io::Result<Vec<TaskFile>> {
    let mut paths: Vec<_> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file()
                && p.extension()
                    .is_some_and(|ext| ext == "yaml" || ext == "yml")
        })
        .collect();
    paths.sort();
    Ok(dedupe(
        paths
            .iter()
            .map(|path| {
                let stem = path
                    .file_stem()
                    .map_or_else(String::new, |s| s.to_string_lossy().into_owned());
                let task = Task::from_file(path).map_err(|e| e.to_string());
                (path.display().to_string(), stem, task)
            })
            .collect(),
    ))
}

/// Task sources in order, each `(source, name when invalid, task or error)`, with the later of
/// two sources that define the same task name turned into an error (names are unique across
/// kinds: reports are stored and served by name). Both backends go through here.
pub(crate) fn dedupe(sources: Vec<(String, String, Result<Task, String>)>) -> Vec<TaskFile> {
    let mut seen: HashMap<String, String> = HashMap::new();
    sources
        .into_iter()
        .map(|(file, stem, task)| {
            let task = task.and_then(|t| match seen.get(t.name()) {
                Some(first) => Err(format!(
                    "{file}: metadata.name: task {:?} is already defined in {first} (names are \
                     unique across kinds)",
                    t.name()
                )),
                None => {
                    seen.insert(t.name().to_string(), file.clone());
                    Ok(Arc::new(t))
                }
            });
            let name = task.as_ref().map_or(stem, |t| t.name().to_string());
            TaskFile { file, name, task }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use meshdoctor_api::TaskKind;

    use super::*;

    const TASK: &str =
        "apiVersion: meshdoctor.io/v1beta1\nkind: NetReach\nmetadata: {name: NAME}\nspec: {}\n";

    #[test]
    fn loads_every_kind_and_invalid_and_duplicate_files() {
        let dir = crate::fixtures::temp_dir("tasks");
        std::fs::write(dir.join("a.yaml"), TASK.replace("NAME", "mesh")).unwrap();
        std::fs::write(dir.join("b.yml"), TASK.replace("NAME", "mesh")).unwrap();
        std::fs::write(
            dir.join("c.yaml"),
            TASK.replace("NAME", "other")
                .replace("spec: {}", "spec: {request: {qps: 0}}"),
        )
        .unwrap();
        std::fs::write(
            dir.join("d.yaml"),
            "apiVersion: kdoctor.io/v1beta1\nkind: Netdns\nmetadata: {name: dns}\n\
             spec: {target: {targetUser: {server: 10.96.0.10}}}\n",
        )
        .unwrap();
        std::fs::write(
            dir.join("e.yaml"),
            "apiVersion: meshdoctor.io/v1beta1\nkind: AppHttpHealthy\nmetadata: {name: web}\n\
             spec: {target: {host: 'web:8080', method: GET}}\n",
        )
        .unwrap();
        std::fs::write(
            dir.join("f.yaml"),
            "apiVersion: meshdoctor.io/v1beta1\nkind: AppHttpHealthy\nmetadata: {name: mesh}\n\
             spec: {target: {host: 'web:8080', method: GET}}\n",
        )
        .unwrap();
        std::fs::write(dir.join("notes.txt"), "not a task").unwrap();
        let files = load_dir(&dir).unwrap();
        assert_eq!(files.len(), 6);
        assert_eq!(files[0].name, "mesh");
        assert_eq!(files[0].task.as_ref().unwrap().kind(), TaskKind::NetReach);
        let dup = files[1].task.as_ref().unwrap_err();
        assert!(
            dup.contains("b.yml: metadata.name: task \"mesh\" is already defined in"),
            "{dup}"
        );
        assert_eq!(files[2].name, "c");
        let bad = files[2].task.as_ref().unwrap_err();
        assert!(bad.contains("c.yaml: spec.request.qps: must be"), "{bad}");
        assert_eq!(files[3].task.as_ref().unwrap().kind(), TaskKind::NetDns);
        assert_eq!(
            files[4].task.as_ref().unwrap().kind(),
            TaskKind::AppHttpHealthy
        );
        let dup = files[5].task.as_ref().unwrap_err();
        assert!(dup.contains("unique across kinds"), "{dup}");
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(load_dir(&dir).is_err());
    }

    #[test]
    fn formatting_changes_are_the_same_task() {
        let dir = crate::fixtures::temp_dir("tasks-same");
        let path = dir.join("mesh.yaml");
        std::fs::write(&path, TASK.replace("NAME", "mesh")).unwrap();
        let before = load_dir(&dir).unwrap();
        std::fs::write(
            &path,
            format!(
                "# a comment\n{}",
                TASK.replace("NAME", "mesh")
                    .replace("spec: {}", "spec:\n  target: {ipv4: true}")
            ),
        )
        .unwrap();
        assert_eq!(load_dir(&dir).unwrap(), before);
        std::fs::write(
            &path,
            TASK.replace("NAME", "mesh")
                .replace("spec: {}", "spec: {target: {ipv6: true}}"),
        )
        .unwrap();
        assert_ne!(load_dir(&dir).unwrap(), before);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
