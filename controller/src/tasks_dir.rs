//! The standalone backend's task source: one task (NetReach, AppHttpHealthy or NetDns) per
//! `*.yaml` / `*.yml` file in a directory. An invalid file is kept as an error entry (shown by
//! `GET /v1/tasks`) instead of aborting the controller, so one typo does not stop every other
//! task.
//!
//! The directory is re-read while the controller runs and each listing handed to whoever
//! applies it (the driver: [`crate::task_table`] says what a new, changed or removed file
//! does). Task names are unique across kinds, because reports are stored and served by name.
//!
//! [`TasksDir`] is the directory as both its readers and its writer use it: the reload loop,
//! and `PUT`/`DELETE /v1/tasks/{name}`, which write or remove one file and apply the directory
//! at once.

use meshdoctor_api::TaskSpec as _;
use std::{
    io,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, PoisonError},
};

use meshdoctor_api::{Task, TaskError, task::is_task_name};

use crate::task_table::{TaskDef, TaskSource};

/// Reads every task file of `dir`, sorted by file name (an invalid file is listed under its
/// stem, with its error). Fails only when the directory itself cannot be read.
pub fn load_dir(dir: &Path) -> io::Result<Vec<TaskDef>> {
    let mut paths: Vec<_> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file()
                && p.extension()
                    .is_some_and(|ext| ext == "yaml" || ext == "yml")
        })
        .collect();
    paths.sort();
    Ok(TaskDef::unique(
        paths
            .iter()
            .map(|path| {
                let stem = path
                    .file_stem()
                    .map_or_else(String::new, |s| s.to_string_lossy().into_owned());
                let task = Task::from_file(path).map_err(Arc::new);
                (TaskSource::File(path.display().to_string()), stem, task)
            })
            .collect(),
    ))
}

/// Why a task file could not be written or removed.
#[derive(Debug, thiserror::Error)]
pub enum TaskFileError {
    #[error(
        "{0:?} is not a task name: a DNS subdomain name (dot-separated labels of lowercase \
         letters, digits and '-', each starting and ending with a letter or digit; at most 253 \
         characters)"
    )]
    BadName(String),
    /// The document does not parse or validate: the parser's message, naming the field.
    #[error(transparent)]
    Invalid(#[from] TaskError),
    #[error("metadata.name: {given:?} differs from the name in the path, {name:?}")]
    NameMismatch { name: String, given: String },
    /// Another file defines a task of that name (names are unique across kinds).
    #[error("metadata.name: task {name:?} is already defined in {file}")]
    Taken { name: String, file: String },
    #[error("no task file {name}.yaml or {name}.yml")]
    NotFound { name: String },
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
}

/// Whether [`TasksDir::put`] created the task's file or replaced it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    Created,
    Replaced,
}

/// The standalone backend's tasks directory. Every read that is applied to the controller
/// goes through [`Self::sync`], under one lock: otherwise a reload that listed the directory
/// just before a `PUT` wrote its file could be applied just after the `PUT`'s own sync, and
/// stop the new task until the next reload (restarting its schedule clock).
#[derive(Debug)]
pub struct TasksDir {
    path: PathBuf,
    sync: Mutex<()>,
}

impl TasksDir {
    pub fn new(path: PathBuf) -> Self {
        Self {
            path,
            sync: Mutex::new(()),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the directory and hands the listing to `apply`. Blocking.
    pub fn sync(&self, apply: &dyn Fn(Vec<TaskDef>)) -> io::Result<()> {
        let _applying = self.sync.lock().unwrap_or_else(PoisonError::into_inner);
        apply(load_dir(&self.path)?);
        Ok(())
    }

    /// The task file `name` is (or would be) stored in.
    pub fn file_of(&self, name: &str) -> PathBuf {
        self.path.join(format!("{name}.yaml"))
    }

    /// Validates `text` (one task document, YAML or JSON) as task `name`, writes it to
    /// `name.yaml` atomically (a temporary file renamed over it, so the reload loop never
    /// reads half a file), removes a `name.yml` it replaces, and syncs. Nothing is written
    /// when the task is invalid. Blocking.
    pub fn put(
        &self,
        apply: &dyn Fn(Vec<TaskDef>),
        name: &str,
        text: &str,
    ) -> Result<Written, TaskFileError> {
        check_name(name)?;
        let task = Task::from_yaml("request body", text)?;
        if task.name() != name {
            return Err(TaskFileError::NameMismatch {
                name: name.into(),
                given: task.name().into(),
            });
        }
        let io_err = |path: &Path| {
            let path = path.display().to_string();
            move |source| TaskFileError::Io { path, source }
        };
        let (yaml, yml) = self.files_of(name);
        let list = load_dir(&self.path).map_err(io_err(&self.path))?;
        let ours = |f: &TaskSource| {
            [&yaml, &yml]
                .iter()
                .any(|p| *f == TaskSource::File(p.display().to_string()))
        };
        if let Some(other) = list
            .iter()
            .find(|f| !ours(&f.source) && f.task.as_ref().is_ok_and(|t| t.name() == name))
        {
            return Err(TaskFileError::Taken {
                name: name.into(),
                file: other.source.to_string(),
            });
        }
        let written = if yaml.exists() || yml.exists() {
            Written::Replaced
        } else {
            Written::Created
        };
        let tmp = self.path.join(format!(".{name}.yaml.tmp"));
        std::fs::write(&tmp, text).map_err(io_err(&tmp))?;
        std::fs::rename(&tmp, &yaml).map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            io_err(&yaml)(e)
        })?;
        match std::fs::remove_file(&yml) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(io_err(&yml)(e)),
            _ => {}
        }
        self.sync(apply).map_err(io_err(&self.path))?;
        Ok(written)
    }

    /// Removes task `name`'s file (`name.yaml` or `name.yml`) and syncs, which stops the
    /// task. Blocking.
    pub fn delete(&self, apply: &dyn Fn(Vec<TaskDef>), name: &str) -> Result<(), TaskFileError> {
        check_name(name)?;
        let mut removed = false;
        for file in <[PathBuf; 2]>::from(self.files_of(name)) {
            match std::fs::remove_file(&file) {
                Ok(()) => removed = true,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(TaskFileError::Io {
                        path: file.display().to_string(),
                        source,
                    });
                }
            }
        }
        if !removed {
            return Err(TaskFileError::NotFound { name: name.into() });
        }
        self.sync(apply).map_err(|source| TaskFileError::Io {
            path: self.path.display().to_string(),
            source,
        })
    }

    /// `name.yaml` and `name.yml`.
    fn files_of(&self, name: &str) -> (PathBuf, PathBuf) {
        (self.file_of(name), self.path.join(format!("{name}.yml")))
    }
}

/// A name from a URL becomes a file name: only task names ([`is_task_name`]), which cannot
/// leave the directory.
fn check_name(name: &str) -> Result<(), TaskFileError> {
    if is_task_name(name) {
        Ok(())
    } else {
        Err(TaskFileError::BadName(name.into()))
    }
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
        let dup = files[1].task.as_ref().unwrap_err().to_string();
        assert!(
            dup.contains("b.yml: metadata.name: task \"mesh\" is already defined in"),
            "{dup}"
        );
        assert_eq!(files[2].name, "c");
        let bad = files[2].task.as_ref().unwrap_err().to_string();
        assert!(bad.contains("c.yaml: spec.request.qps: must be"), "{bad}");
        assert_eq!(files[3].task.as_ref().unwrap().kind(), TaskKind::NetDns);
        assert_eq!(
            files[4].task.as_ref().unwrap().kind(),
            TaskKind::AppHttpHealthy
        );
        let dup = files[5].task.as_ref().unwrap_err().to_string();
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
