//! The standalone backend's task source: one NetReach YAML file per `*.yaml` / `*.yml` file in
//! a directory. An invalid file is kept as an error entry (shown by `GET /v1/tasks`) instead of
//! aborting the controller, so one typo does not stop every other task.

use std::{collections::HashMap, io, path::Path, sync::Arc};

use meshdoctor_api::NetReach;

/// One task file and what came of parsing it.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskFile {
    pub file: String,
    /// The task name, or the file stem when the file is invalid.
    pub name: String,
    pub task: Result<Arc<NetReach>, String>,
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
    let mut seen: HashMap<String, String> = HashMap::new();
    Ok(paths
        .iter()
        .map(|path| {
            let file = path.display().to_string();
            let stem = path
                .file_stem()
                .map_or_else(String::new, |s| s.to_string_lossy().into_owned());
            let task = NetReach::from_file(path).map_err(|e| e.to_string());
            let task = task.and_then(|t| match seen.get(t.name()) {
                Some(first) => Err(format!(
                    "{file}: metadata.name: task {:?} is already defined in {first}",
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
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TASK: &str =
        "apiVersion: meshdoctor.io/v1beta1\nkind: NetReach\nmetadata: {name: NAME}\nspec: {}\n";

    #[test]
    fn loads_valid_invalid_and_duplicate_files() {
        let dir = std::env::temp_dir().join(format!("meshdoctor-tasks-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("a.yaml"), TASK.replace("NAME", "mesh")).unwrap();
        std::fs::write(dir.join("b.yml"), TASK.replace("NAME", "mesh")).unwrap();
        std::fs::write(
            dir.join("c.yaml"),
            TASK.replace("NAME", "other")
                .replace("spec: {}", "spec: {request: {qps: 0}}"),
        )
        .unwrap();
        std::fs::write(dir.join("notes.txt"), "not a task").unwrap();
        let files = load_dir(&dir).unwrap();
        assert_eq!(files.len(), 3);
        assert_eq!(files[0].name, "mesh");
        assert!(files[0].task.is_ok());
        let dup = files[1].task.as_ref().unwrap_err();
        assert!(
            dup.contains("b.yml: metadata.name: task \"mesh\" is already defined in"),
            "{dup}"
        );
        assert_eq!(files[2].name, "c");
        let bad = files[2].task.as_ref().unwrap_err();
        assert!(bad.contains("c.yaml: spec.request.qps: must be"), "{bad}");
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(load_dir(&dir).is_err());
    }
}
