//! The task table, pure: which tasks are defined (files in standalone, objects in Kubernetes),
//! which incarnation of each runs, and each task's status. [`TaskTable::apply`] turns a new
//! list of definitions into [`Change`]s that the driver ([`crate::driver`]) executes (start or
//! stop a schedule, publish a status); [`TaskTable::record`] folds a closed round into its
//! task's status.
//!
//! What a definition change does:
//! - a new definition starts its task's schedule clock;
//! - a definition whose task changed (its parsed content; comments and formatting do not
//!   count) restarts the schedule clock with the new spec; the status keeps its history (see
//!   `meshdoctor_api::status`), and a round of the old spec still open is noted;
//! - a removed definition stops its schedule and drops the task from the table; rounds
//!   already published finish and are stored, only their status is not recorded;
//! - an invalid definition is kept with its error (and the status of the task it defined
//!   before, for when it is fixed), so one typo does not stop every other task.

use std::{collections::BTreeMap, fmt, sync::Arc};

use meshdoctor_api::{
    RoundReport, Task, TaskError, TaskKind, TaskSpec as _, TaskStatus,
    status::{Condition, ConditionStatus},
    views::TaskView,
};

/// Where a task is defined: the key of the table.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TaskSource {
    /// A file of the standalone backend's tasks directory (its path).
    File(String),
    /// A custom resource of the Kubernetes backend.
    Object { kind: TaskKind, name: String },
}

impl fmt::Display for TaskSource {
    /// The path of a file; `netreaches/NAME` and the like for an object.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::File(path) => f.write_str(path),
            Self::Object { kind, name } => write!(f, "{}/{name}", kind.plural()),
        }
    }
}

/// Why a definition cannot run.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DefError {
    /// It does not parse or validate (the message names the source and the field).
    #[error(transparent)]
    Invalid(Arc<TaskError>),
    /// An earlier source defines a task of the same name.
    #[error(
        "{at}: metadata.name: task {name:?} is already defined in {first} (names are unique \
         across kinds)"
    )]
    Duplicate {
        at: TaskSource,
        name: String,
        first: TaskSource,
    },
}

/// Definitions are equal when they say the same: an unchanged invalid file is no change.
impl PartialEq for DefError {
    fn eq(&self, other: &Self) -> bool {
        self.to_string() == other.to_string()
    }
}

/// One task definition and what came of parsing it.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskDef {
    pub source: TaskSource,
    /// The task name, or, when the definition is invalid, the name it is listed under (the
    /// file stem, the object name).
    pub name: String,
    /// The task, or why it cannot run. Two definitions are the same task when they parse to
    /// the same task.
    pub task: Result<Arc<Task>, DefError>,
}

impl TaskDef {
    /// Definitions in order, each `(source, name when invalid, task or error)`, with the later
    /// of two that define the same task name turned into an error: names are unique across
    /// kinds, because reports are stored and served by name. Both backends go through here.
    pub fn unique(defs: Vec<(TaskSource, String, Result<Task, Arc<TaskError>>)>) -> Vec<Self> {
        let mut seen: BTreeMap<String, TaskSource> = BTreeMap::new();
        defs.into_iter()
            .map(|(source, stem, task)| {
                let task = task
                    .map_err(DefError::Invalid)
                    .and_then(|t| match seen.get(t.name()) {
                        Some(first) => Err(DefError::Duplicate {
                            at: source.clone(),
                            name: t.name().to_string(),
                            first: first.clone(),
                        }),
                        None => {
                            seen.insert(t.name().to_string(), source.clone());
                            Ok(Arc::new(t))
                        }
                    });
                let name = task.as_ref().map_or(stem, |t| t.name().to_string());
                Self { source, name, task }
            })
            .collect()
    }
}

/// One incarnation of a task: where it is defined, its name, and which definition of that
/// source it runs (a changed spec is a new incarnation, so that rounds of the replaced spec do
/// not count toward the new one's rounds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskId {
    pub source: TaskSource,
    pub name: String,
    pub generation: u64,
}

/// Where a task's schedule starts: after the rounds its status already counts (a finished
/// task's schedule wants no more).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resume {
    /// Rounds of the current spec already done.
    pub done: u32,
    /// The newest round number in the history (rounds are numbered on from it).
    pub last_round: Option<u32>,
}

/// Why a schedule starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// A definition new to this controller.
    Loaded,
    /// Its spec changed: the schedule restarts.
    Changed,
    /// New to this controller, continuing from the status an earlier controller wrote.
    Resumed,
}

/// What the driver does after [`TaskTable::apply`], in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// Stop the schedule of `source` (removed, replaced or now invalid).
    Stop(TaskSource),
    /// Start the schedule of a task.
    Start {
        id: TaskId,
        task: Arc<Task>,
        resume: Resume,
        why: Start,
    },
    /// A definition cannot be used: say so.
    Invalid { source: TaskSource, error: DefError },
    /// The status of `source` changed: publish it (the Kubernetes backend writes it).
    Status(TaskSource, Box<TaskStatus>),
}

/// Condition type: the spec was read and validated (`False`: why it cannot run).
pub const VALID: &str = "Valid";
/// Condition type: the latest closed round ran under the current spec (`False` while rounds of
/// a replaced spec are still open).
pub const CURRENT: &str = "Current";

fn condition(type_: &str, ok: bool, reason: &str, message: String, now_ms: u64) -> Condition {
    Condition {
        type_: type_.into(),
        status: if ok {
            ConditionStatus::True
        } else {
            ConditionStatus::False
        },
        reason: reason.into(),
        message,
        last_transition_ms: now_ms,
        observed_generation: None,
    }
}

struct Entry {
    def: TaskDef,
    generation: u64,
    /// The status of the task this source last defined, with that task's name: kept across
    /// spec changes, and across an invalid edit for when it is fixed, while the name stays.
    status: Option<(String, TaskStatus)>,
}

/// The tasks by source.
pub struct TaskTable {
    entries: BTreeMap<TaskSource, Entry>,
    generations: u64,
    max_history: usize,
}

impl TaskTable {
    /// `max_history`: round history entries kept per task.
    pub fn new(max_history: usize) -> Self {
        Self {
            entries: BTreeMap::new(),
            generations: 0,
            max_history,
        }
    }

    /// Makes the table match `defs` (every definition there is) and says what must happen.
    /// A source new to the table continues from its status in `seeds` when there is one (the
    /// status an earlier controller wrote for the same spec). `open_rounds` are the rounds
    /// still open, by task name: a spec that changes under one is noted in its status.
    pub fn apply(
        &mut self,
        defs: Vec<TaskDef>,
        mut seeds: BTreeMap<TaskSource, TaskStatus>,
        open_rounds: &BTreeMap<String, Vec<u32>>,
        now_ms: u64,
    ) -> Vec<Change> {
        let mut changes = Vec::new();
        let keep: std::collections::HashSet<&TaskSource> = defs.iter().map(|d| &d.source).collect();
        self.entries.retain(|source, _| {
            let kept = keep.contains(source);
            if !kept {
                changes.push(Change::Stop(source.clone()));
            }
            kept
        });
        for def in defs {
            if self.entries.get(&def.source).is_some_and(|e| e.def == def) {
                continue;
            }
            let previous = self.entries.remove(&def.source);
            if previous.is_some() {
                changes.push(Change::Stop(def.source.clone()));
            }
            let kept = previous.and_then(|e| e.status);
            let seed = seeds.remove(&def.source);
            self.generations += 1;
            let generation = self.generations;
            let status = match &def.task {
                Err(error) => {
                    let (owner, mut status) = kept
                        .or(seed.map(|s| (def.name.clone(), s)))
                        .unwrap_or_else(|| {
                            (def.name.clone(), TaskStatus::new(0, self.max_history))
                        });
                    let invalid = condition(VALID, false, "InvalidSpec", error.to_string(), now_ms);
                    status.set_condition(invalid);
                    changes.push(Change::Invalid {
                        source: def.source.clone(),
                        error: error.clone(),
                    });
                    changes.push(Change::Status(def.source.clone(), Box::new(status.clone())));
                    (owner, status)
                }
                Ok(task) => {
                    let (status, why) = self.status_of(task, kept, seed, open_rounds, now_ms);
                    changes.push(Change::Status(def.source.clone(), Box::new(status.clone())));
                    changes.push(Change::Start {
                        id: TaskId {
                            source: def.source.clone(),
                            name: task.name().to_string(),
                            generation,
                        },
                        task: task.clone(),
                        resume: Resume {
                            done: u32::try_from(status.done_round).unwrap_or(u32::MAX),
                            last_round: status.history.iter().map(|h| h.round_number).max(),
                        },
                        why,
                    });
                    (task.name().to_string(), status)
                }
            };
            self.entries.insert(
                def.source.clone(),
                Entry {
                    def,
                    generation,
                    status: Some(status),
                },
            );
        }
        changes
    }

    /// The status a valid task starts with: its earlier status restarted when the same task
    /// changed, else the seed, else a fresh one; with the Valid condition.
    fn status_of(
        &self,
        task: &Task,
        kept: Option<(String, TaskStatus)>,
        seed: Option<TaskStatus>,
        open_rounds: &BTreeMap<String, Vec<u32>>,
        now_ms: u64,
    ) -> (TaskStatus, Start) {
        let rounds = task.schedule_plan().round_number;
        let (mut status, why) = match (kept, seed) {
            (Some((name, mut status)), _) if name == task.name() => {
                status.restart(rounds);
                if let Some(open) = open_rounds.get(task.name()).filter(|o| !o.is_empty()) {
                    let open: Vec<String> = open.iter().map(u32::to_string).collect();
                    status.set_condition(condition(
                        CURRENT,
                        false,
                        "SpecChangedMidRound",
                        format!(
                            "the spec changed while round {} was running: it finishes under the \
                             previous spec and does not count toward doneRound; the schedule \
                             restarted with the new spec",
                            open.join(", ")
                        ),
                        now_ms,
                    ));
                }
                (status, Start::Changed)
            }
            (_, Some(mut seeded)) => {
                seeded.expected_round = rounds;
                (seeded, Start::Resumed)
            }
            _ => (TaskStatus::new(rounds, self.max_history), Start::Loaded),
        };
        let warnings = task.warnings();
        let message = if warnings.is_empty() {
            "the spec is valid".to_string()
        } else {
            format!("the spec is valid; {}", warnings.join("; "))
        };
        status.set_condition(condition(VALID, true, "Valid", message, now_ms));
        (status, why)
    }

    /// Folds a closed round of `id` into its task's status; the status to publish, or `None`
    /// when the source is gone or now defines another task. A round of an earlier incarnation
    /// lands in the history without counting toward the current spec's rounds.
    pub fn record(
        &mut self,
        id: &TaskId,
        report: &RoundReport,
        deadline_ms: u64,
        now_ms: u64,
    ) -> Option<Change> {
        let entry = self.entries.get_mut(&id.source)?;
        let (owner, status) = entry.status.as_mut()?;
        if *owner != id.name {
            return None;
        }
        let current = entry.generation == id.generation;
        status.record(report, deadline_ms, current);
        if current {
            status.set_condition(condition(
                CURRENT,
                true,
                "Current",
                format!("round {} ran under the current spec", report.round),
                now_ms,
            ));
        }
        Some(Change::Status(id.source.clone(), Box::new(status.clone())))
    }

    /// Every task as `GET /v1/tasks` lists it, by name then source.
    pub fn views(&self) -> Vec<TaskView> {
        let mut views: Vec<TaskView> = self
            .entries
            .values()
            .map(|e| {
                let task = e.def.task.as_ref().ok();
                TaskView {
                    name: e.def.name.clone(),
                    file: e.def.source.to_string(),
                    kind: task.map(|t| t.kind()),
                    schedule: task.map(|t| t.schedule_plan().schedule.clone()),
                    error: e.def.task.as_ref().err().map(ToString::to_string),
                    warnings: task.map(|t| t.warnings()).unwrap_or_default(),
                    status: task.and(e.status.as_ref()).map(|(_, s)| s.clone()),
                }
            })
            .collect();
        views.sort_by(|a, b| a.name.cmp(&b.name).then_with(|| a.file.cmp(&b.file)));
        views
    }

    /// Names of the valid tasks of `kind`, sorted.
    pub fn names_of(&self, kind: TaskKind) -> Vec<String> {
        let names: std::collections::BTreeSet<String> = self
            .entries
            .values()
            .filter(|e| e.def.task.as_ref().is_ok_and(|t| t.kind() == kind))
            .map(|e| e.def.name.clone())
            .collect();
        names.into_iter().collect()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use meshdoctor_api::{LastRoundStatus, RoundStatus};

    use super::*;

    const MESH: &str = "apiVersion: meshdoctor.io/v1beta1\nkind: NetReach\nmetadata: {name: mesh}\n\
                        spec: {schedule: {schedule: '@every 10s', roundNumber: 2}}\n";
    const WEB: &str = "apiVersion: meshdoctor.io/v1beta1\nkind: AppHttpHealthy\n\
                       metadata: {name: web}\nspec: {target: {host: 'web:8080', method: GET}}\n";

    pub(crate) fn mk_def(file: &str, yaml: &str) -> TaskDef {
        let task = Task::from_yaml(file, yaml)
            .map(Arc::new)
            .map_err(|e| DefError::Invalid(Arc::new(e)));
        TaskDef {
            source: TaskSource::File(file.into()),
            name: task.as_ref().map_or("invalid".into(), |t| t.name().into()),
            task,
        }
    }

    fn apply(table: &mut TaskTable, defs: Vec<TaskDef>) -> Vec<Change> {
        table.apply(defs, BTreeMap::new(), &BTreeMap::new(), 1)
    }

    fn started(changes: &[Change]) -> Vec<(String, Start)> {
        changes
            .iter()
            .filter_map(|c| match c {
                Change::Start { id, why, .. } => Some((id.name.clone(), *why)),
                _ => None,
            })
            .collect()
    }

    fn stopped(changes: &[Change]) -> Vec<String> {
        changes
            .iter()
            .filter_map(|c| match c {
                Change::Stop(s) => Some(s.to_string()),
                _ => None,
            })
            .collect()
    }

    fn status(table: &TaskTable, name: &str) -> TaskStatus {
        let view = table.views().into_iter().find(|t| t.name == name).unwrap();
        view.status.unwrap()
    }

    /// Records round `round` of the task `source` currently runs, as the driver does.
    fn close_round(table: &mut TaskTable, source: &str, round: u32, generation: u64) {
        let id = TaskId {
            source: TaskSource::File(source.into()),
            name: "mesh".into(),
            generation,
        };
        let report = RoundReport::test("mesh", round, RoundStatus::Succeed);
        table.record(&id, &report, report.end_ms, 1).unwrap();
    }

    #[test]
    fn tasks_are_added_changed_and_removed() {
        let mut table = TaskTable::new(10);
        let changes = apply(&mut table, vec![mk_def("mesh.yaml", MESH)]);
        assert_eq!(started(&changes), [("mesh".to_string(), Start::Loaded)]);
        close_round(&mut table, "mesh.yaml", 1, 1);
        close_round(&mut table, "mesh.yaml", 2, 1);
        assert!(status(&table, "mesh").finish);

        // Added: an AppHttpHealthy task is listed with its status and started.
        let changes = apply(
            &mut table,
            vec![mk_def("mesh.yaml", MESH), mk_def("web.yaml", WEB)],
        );
        assert_eq!(started(&changes), [("web".to_string(), Start::Loaded)]);
        let views = table.views();
        assert_eq!(views.len(), 2);
        let w = &views[1];
        assert_eq!(
            (w.name.as_str(), w.kind),
            ("web", Some(TaskKind::AppHttpHealthy))
        );
        assert_eq!(w.schedule.as_deref(), Some("0 1"));
        assert!(w.warnings.is_empty(), "{:?}", w.warnings);
        let st = w.status.as_ref().unwrap();
        assert_eq!(
            (st.expected_round, st.done_round, st.last_round_status),
            (1, 0, LastRoundStatus::Unknown)
        );

        // Unchanged: nothing happens.
        let changes = apply(
            &mut table,
            vec![mk_def("mesh.yaml", MESH), mk_def("web.yaml", WEB)],
        );
        assert!(changes.is_empty(), "{changes:?}");

        // Changed while round 3 runs: the schedule restarts with the new roundNumber, the
        // history stays, the open round is noted, and a late round of the old spec lands in
        // the history without counting.
        let changed = MESH.replace("roundNumber: 2", "roundNumber: -1");
        let open = BTreeMap::from([("mesh".to_string(), vec![3])]);
        let changes = table.apply(
            vec![mk_def("mesh.yaml", &changed), mk_def("web.yaml", WEB)],
            BTreeMap::new(),
            &open,
            1,
        );
        assert_eq!(stopped(&changes), ["mesh.yaml"]);
        assert_eq!(started(&changes), [("mesh".to_string(), Start::Changed)]);
        let st = status(&table, "mesh");
        assert_eq!(
            (st.expected_round, st.done_round, st.finish),
            (-1, 0, false)
        );
        assert_eq!(st.history.len(), 2);
        let current = st.conditions.iter().find(|c| c.type_ == CURRENT).unwrap();
        assert_eq!(current.reason, "SpecChangedMidRound");
        close_round(&mut table, "mesh.yaml", 3, 1);
        assert_eq!(status(&table, "mesh").done_round, 0);
        assert_eq!(status(&table, "mesh").history.len(), 3);

        // An invalid edit shows the error; fixing it brings the history back.
        let broken = changed.replace("'@every 10s'", "'@every 10'");
        let changes = apply(&mut table, vec![mk_def("mesh.yaml", &broken)]);
        assert_eq!(stopped(&changes), ["web.yaml", "mesh.yaml"]);
        assert!(matches!(&changes[2], Change::Invalid { .. }), "{changes:?}");
        let views = table.views();
        assert_eq!(views.len(), 1, "web.yaml was removed");
        assert!(
            views[0]
                .error
                .as_ref()
                .unwrap()
                .contains("mesh.yaml: spec.schedule.schedule: @every: missing unit")
        );
        assert!(views[0].status.is_none() && views[0].kind.is_none());
        apply(&mut table, vec![mk_def("mesh.yaml", &changed)]);
        assert_eq!(status(&table, "mesh").history.len(), 3);

        // Renamed: another task, with a fresh status; the old name's late round is not
        // recorded.
        let renamed = changed.replace("name: mesh", "name: mesh2");
        apply(&mut table, vec![mk_def("mesh.yaml", &renamed)]);
        assert!(status(&table, "mesh2").history.is_empty());
        let old = TaskId {
            source: TaskSource::File("mesh.yaml".into()),
            name: "mesh".into(),
            generation: 1,
        };
        let report = RoundReport::test("mesh", 9, RoundStatus::Succeed);
        assert_eq!(table.record(&old, &report, 0, 1), None);

        // Removed: gone from the list.
        let changes = apply(&mut table, vec![]);
        assert_eq!(stopped(&changes), ["mesh.yaml"]);
        assert!(table.views().is_empty());
    }

    #[test]
    fn names_of_a_kind_are_the_valid_tasks_sorted() {
        let mut table = TaskTable::new(10);
        let broken = MESH
            .replace("name: mesh", "name: broken")
            .replace("'@every 10s'", "'x'");
        apply(
            &mut table,
            vec![
                mk_def("z.yaml", &MESH.replace("name: mesh", "name: alpha")),
                mk_def("a.yaml", MESH),
                mk_def("b.yaml", WEB),
                mk_def("c.yaml", &broken),
            ],
        );
        assert_eq!(table.names_of(TaskKind::NetReach), ["alpha", "mesh"]);
        assert_eq!(table.names_of(TaskKind::AppHttpHealthy), ["web"]);
    }

    #[test]
    fn a_seeded_task_continues_from_its_status() {
        let mut table = TaskTable::new(10);
        let mut seed = TaskStatus::new(5, 10);
        seed.done_round = 3;
        let source = TaskSource::Object {
            kind: TaskKind::NetReach,
            name: "mesh".into(),
        };
        let def = TaskDef {
            source: source.clone(),
            ..mk_def("x", MESH)
        };
        let changes = table.apply(
            vec![def],
            BTreeMap::from([(source, seed)]),
            &BTreeMap::new(),
            1,
        );
        let Some(Change::Start { resume, why, .. }) =
            changes.iter().find(|c| matches!(c, Change::Start { .. }))
        else {
            panic!("{changes:?}")
        };
        assert_eq!((resume.done, *why), (3, Start::Resumed));
        assert_eq!(status(&table, "mesh").expected_round, 2);
    }

    #[test]
    fn names_are_unique_across_sources() {
        let defs = TaskDef::unique(vec![
            (
                TaskSource::File("a.yaml".into()),
                "a".into(),
                Task::from_yaml("a.yaml", MESH).map_err(Arc::new),
            ),
            (
                TaskSource::Object {
                    kind: TaskKind::AppHttpHealthy,
                    name: "mesh".into(),
                },
                "mesh".into(),
                Task::from_yaml("x", &WEB.replace("name: web", "name: mesh")).map_err(Arc::new),
            ),
        ]);
        assert!(defs[0].task.is_ok());
        let e = defs[1].task.as_ref().unwrap_err().to_string();
        assert_eq!(
            e,
            "apphttphealthies/mesh: metadata.name: task \"mesh\" is already defined in a.yaml \
             (names are unique across kinds)"
        );
    }
}
