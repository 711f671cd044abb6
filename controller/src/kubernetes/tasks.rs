//! Tasks as custom resources: the three kinds' objects turned into the same [`TaskDef`]s the
//! standalone backend reads from a directory, so the round driver does not know where a task
//! came from (pure; the watchers in [`super`] feed it).
//!
//! Objects are watched untyped ([`DynamicObject`]) and parsed here with the same strict parser
//! as task files: an object the apiserver accepted but meshdoctor cannot use (a schema from
//! another version, a rule CEL cannot express) is one task with an error, shown in its status,
//! instead of a watch that fails to decode its whole list.

use std::{collections::BTreeMap, sync::Arc};

use kube::{api::ApiResource, core::DynamicObject};
use meshdoctor_api::{
    Task, TaskError, TaskKind, TaskStatus,
    task::{AppHttpHealthyResource, NetDnsResource, NetReachResource},
};
use serde_json::json;

use crate::task_table::{TaskDef, TaskSource};

/// The API resource of a task kind, from its generated custom resource type.
pub fn resource(kind: TaskKind) -> ApiResource {
    match kind {
        TaskKind::NetReach => ApiResource::erase::<NetReachResource>(&()),
        TaskKind::AppHttpHealthy => ApiResource::erase::<AppHttpHealthyResource>(&()),
        TaskKind::NetDns => ApiResource::erase::<NetDnsResource>(&()),
    }
}

/// A task object as the watchers last saw it.
#[derive(Debug, Clone)]
pub struct TaskObject {
    pub kind: TaskKind,
    pub name: String,
    /// `metadata.generation`: bumped by the apiserver on every spec change.
    pub generation: Option<i64>,
    /// The task, or why it cannot run (`netreaches/mesh: spec.request.qps: ...`).
    pub task: Result<Task, Arc<TaskError>>,
    /// The status the object carries (written by an earlier leader), if it parses.
    pub status: Option<TaskStatus>,
}

/// Reads a task object of `kind`.
pub fn task_object(kind: TaskKind, obj: &DynamicObject) -> TaskObject {
    let name = obj.metadata.name.clone().unwrap_or_default();
    let source = TaskSource::Object {
        kind,
        name: name.clone(),
    };
    // The document a task file would hold: the status is not part of the task.
    let doc = json!({
        "apiVersion": resource(kind).api_version,
        "kind": kind.as_str(),
        "metadata": { "name": name },
        "spec": obj.data.get("spec").cloned().unwrap_or_else(|| json!({})),
    });
    let task = Task::from_yaml(&source.to_string(), &doc.to_string()).map_err(Arc::new);
    let status = obj
        .data
        .get("status")
        .and_then(|s| serde_json::from_value(s.clone()).ok());
    TaskObject {
        kind,
        name,
        generation: obj.metadata.generation,
        task,
        status,
    }
}

impl TaskObject {
    /// Where the driver knows the task from.
    pub fn source(&self) -> TaskSource {
        TaskSource::Object {
            kind: self.kind,
            name: self.name.clone(),
        }
    }
}

/// The task definitions of all objects, in the round driver's terms, ordered as their names in
/// messages (`apphttphealthies/x` before `netreaches/x`); names are unique across kinds (the
/// later definition of a duplicate name gets an error).
pub fn task_defs<'a>(objects: impl IntoIterator<Item = &'a TaskObject>) -> Vec<TaskDef> {
    let mut sorted: BTreeMap<String, &TaskObject> = BTreeMap::new();
    for o in objects {
        sorted.insert(o.source().to_string(), o);
    }
    TaskDef::unique(
        sorted
            .into_values()
            .map(|o| (o.source(), o.name.clone(), o.task.clone()))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mk_object(kind: TaskKind, name: &str, spec: serde_json::Value) -> DynamicObject {
        let mut obj = DynamicObject::new(name, &resource(kind)).data(json!({ "spec": spec }));
        obj.metadata.generation = Some(3);
        obj
    }

    #[test]
    fn objects_parse_like_task_files() {
        let o = task_object(
            TaskKind::NetReach,
            &mk_object(TaskKind::NetReach, "mesh", json!({"request": {"qps": 10}})),
        );
        assert_eq!(o.generation, Some(3));
        let task = o.task.unwrap();
        assert_eq!(task.kind(), TaskKind::NetReach);
        assert_eq!(task.spec().load().qps, 10);
        let bad = task_object(
            TaskKind::NetReach,
            &mk_object(TaskKind::NetReach, "bad", json!({"request": {"qps": 0}})),
        );
        let e = bad.task.unwrap_err().to_string();
        assert!(e.starts_with("netreaches/bad: spec.request.qps: "), "{e}");
        let bad = task_object(
            TaskKind::NetDns,
            &mk_object(TaskKind::NetDns, "dns", json!({"target": {"nope": 1}})),
        );
        let e = bad.task.unwrap_err().to_string();
        assert!(e.starts_with("netdnses/dns: spec.target"), "{e}");
    }

    #[test]
    fn names_are_unique_across_kinds() {
        let objects = [
            task_object(
                TaskKind::NetReach,
                &mk_object(TaskKind::NetReach, "x", json!({})),
            ),
            task_object(
                TaskKind::AppHttpHealthy,
                &mk_object(
                    TaskKind::AppHttpHealthy,
                    "x",
                    json!({"target": {"host": "http://web", "method": "GET"}}),
                ),
            ),
        ];
        let files = task_defs(&objects);
        assert_eq!(files.len(), 2);
        // Sorted by source: apphttphealthies/x first, so the NetReach is the duplicate.
        assert!(files[0].task.is_ok());
        let e = files[1].task.as_ref().unwrap_err().to_string();
        assert!(e.contains("already defined in apphttphealthies/x"), "{e}");
    }

    #[test]
    fn sources_are_named_by_the_resource_plural() {
        for kind in TaskKind::ALL {
            let source = TaskSource::Object {
                kind,
                name: "t".into(),
            };
            assert_eq!(source.to_string(), format!("{}/t", resource(kind).plural));
        }
    }
}
