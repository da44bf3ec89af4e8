//! A reference model of Halyard's instance lifecycle, in plain Rust (no I/O), for the
//! state-machine test (`nexus/tests/nexus/model_test.rs`) to check the real system against.
//!
//! # What it holds
//!
//! Sleds (capacity in hardware threads and GiB of memory, and whether they are expunged),
//! projects, and each project's instances. An instance is what a user and an operator can
//! see of it at one moment ([`InstanceModel`]): its run state as the external API shows it
//! (Oxide's states, [`RunState`]), the sled of its active VMM and the sled of its migration
//! target VMM, if any (what `omdb db instances` shows), and its size. A sled holds exactly
//! the sizes of the instances whose active or target VMM is on it.
//!
//! # Operations and their allowed outcomes
//!
//! [`Model::apply`] takes an operation ([`Op`]: create, start, stop, reboot, migrate, delete,
//! project create/delete, sled expunge) and returns every [`Allowed`] outcome: the answer the
//! API may give (success, or a refusal with its status and `error_code`, as in the races
//! test's refusal table) and the model state after it. Where timing decides (an instance may
//! have finished starting or not when a stop arrives; a start may land on any sled with
//! room) it returns several; the test keeps whichever the real system's answer and its
//! observed state agree with. Refusals:
//!
//! | operation | refused with | when |
//! |---|---|---|
//! | any on an instance | 404 `ObjectNotFound` | no such project or instance |
//! | create | 400 `ObjectAlreadyExists` | the name is taken in the project |
//! | start | 409 `Conflict` | still `creating` |
//! | start, migrate | 507 `InsufficientCapacity` | no sled it may use has room |
//! | stop | 409 `Conflict` | migrating, or the start has not registered its VMM yet |
//! | reboot | 409 `Conflict` | not `running` |
//! | migrate | 409 `Conflict` | not `running`, or already migrating |
//! | migrate | 400 `InvalidRequest` | to the sled it already runs on |
//! | migrate | 409 `Conflict` | to a sled that is expunged |
//! | delete | 409 `Conflict` | it has an active VMM |
//! | project create | 400 `ObjectAlreadyExists` | the name is taken |
//! | project delete | 400 `InvalidRequest` | it still holds instances |
//!
//! An operation whose answer never reached the client (its reply was lost, or Nexus was
//! killed while handling it) may have been applied or not: [`Model::unanswered`] allows the
//! state before it and every state after any of its outcomes; what is observed next decides.
//! A request refused `503 ServiceNotAvailable` (the database was down) was not applied.
//! Operations sent at once must answer as some order of them would
//! ([`Model::apply_concurrent`]), with one allowance: deletes of one instance sent together
//! may all succeed (each found it; it is destroyed once).
//!
//! # Time passing
//!
//! Between operations an instance may move on by itself ([`InstanceModel::progress`]):
//! `starting → running`, `stopping → stopped`, `rebooting → running`, a migration to its
//! target (`running` with a target → `migrating` → `running` on the target), a failed VMM
//! retired (`failed` on a sled → `failed` on none). With a fault injected into it
//! ([`InstanceModel::fault`]) it may also fail, or its migration fail back to its source.
//! [`InstanceModel::reachable`] is every state time alone can lead to; what the real system
//! shows must be one of them, and at a quiet point a settled one ([`InstanceModel::is_settled`]).
//!
//! The model is deliberately coarse where the real system is not observable from outside
//! (saga nodes, generations); the invariant checker covers those at every quiet point.

use std::collections::{BTreeMap, BTreeSet};

/// What the external API shows an instance as (Oxide's instance states, less `repairing`,
/// which Halyard never shows).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RunState {
    Creating,
    Starting,
    Running,
    Stopping,
    Stopped,
    Rebooting,
    Migrating,
    Failed,
}

impl RunState {
    /// The API's label (`run_state`).
    pub fn label(self) -> &'static str {
        match self {
            RunState::Creating => "creating",
            RunState::Starting => "starting",
            RunState::Running => "running",
            RunState::Stopping => "stopping",
            RunState::Stopped => "stopped",
            RunState::Rebooting => "rebooting",
            RunState::Migrating => "migrating",
            RunState::Failed => "failed",
        }
    }

    pub fn from_label(label: &str) -> Option<RunState> {
        [
            RunState::Creating,
            RunState::Starting,
            RunState::Running,
            RunState::Stopping,
            RunState::Stopped,
            RunState::Rebooting,
            RunState::Migrating,
            RunState::Failed,
        ]
        .into_iter()
        .find(|s| s.label() == label)
    }

    /// Whether the state itself is one nothing is under way in (see
    /// [`InstanceModel::is_settled`]).
    pub fn is_settled(self) -> bool {
        matches!(
            self,
            RunState::Running | RunState::Stopped | RunState::Failed
        )
    }
}

/// A sled: its capacity and whether an operator has expunged it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SledModel {
    pub threads: u32,
    pub memory_gib: u32,
}

/// One instance as it can be seen from outside.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InstanceModel {
    pub ncpus: u32,
    pub memory_gib: u32,
    pub state: RunState,
    /// The sled of the active VMM (`None` with no active VMM, or while a start has claimed
    /// the instance but not yet recorded its VMM).
    pub active_sled: Option<usize>,
    /// The sled of the migration target VMM, during a migration.
    pub target_sled: Option<usize>,
    /// A fault was injected into its VMM (or its migration) and may not have struck yet: it
    /// may fail, or its migration fail back, at any time until it settles.
    pub fault: bool,
}

/// The answer the external API gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Outcome {
    /// 2xx.
    Ok,
    /// A refusal: status and `error_code`.
    Refused(u16, &'static str),
}

const NOT_FOUND: Outcome = Outcome::Refused(404, "ObjectNotFound");
const NAME_TAKEN: Outcome = Outcome::Refused(400, "ObjectAlreadyExists");
const CONFLICT: Outcome = Outcome::Refused(409, "Conflict");
const NO_ROOM: Outcome = Outcome::Refused(507, "InsufficientCapacity");
const INVALID: Outcome = Outcome::Refused(400, "InvalidRequest");

/// An operation a user or operator performs.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Op {
    ProjectCreate {
        project: String,
    },
    ProjectDelete {
        project: String,
    },
    Create {
        project: String,
        name: String,
        ncpus: u32,
        memory_gib: u32,
        start: bool,
    },
    Start {
        project: String,
        name: String,
    },
    Stop {
        project: String,
        name: String,
    },
    Reboot {
        project: String,
        name: String,
    },
    /// To any sled with room, or to the sled of this index.
    Migrate {
        project: String,
        name: String,
        to: Option<usize>,
    },
    Delete {
        project: String,
        name: String,
    },
    /// The operator expunges the sled of this index.
    ExpungeSled {
        sled: usize,
    },
}

/// One outcome the model allows: the answer, and the state after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allowed {
    pub outcome: Outcome,
    pub next: Model,
}

/// The whole system as the model sees it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Model {
    pub sleds: Vec<SledModel>,
    /// Indices of expunged sleds.
    pub expunged: BTreeSet<usize>,
    /// Projects by name, each with its instances by name.
    pub projects: BTreeMap<String, BTreeMap<String, InstanceModel>>,
}

impl InstanceModel {
    /// The states this instance may move to by itself in one step (time passing, no
    /// operation): see the module's docs.
    pub fn progress(&self) -> Vec<InstanceModel> {
        let with = |state, active_sled, target_sled| InstanceModel {
            state,
            active_sled,
            target_sled,
            ..self.clone()
        };
        let mut next = Vec::new();
        let (active, target) = (self.active_sled, self.target_sled);
        match self.state {
            RunState::Creating => next.push(with(RunState::Stopped, None, None)),
            RunState::Starting => match active {
                // Claimed, VMM not recorded yet: it will be, on some sled.
                None => next.push(with(RunState::Starting, Some(usize::MAX), None)),
                Some(_) => next.push(with(RunState::Running, active, None)),
            },
            RunState::Running | RunState::Migrating if target.is_some() => {
                // The source migrates out, then the target takes over (still `migrating`
                // until it reports running).
                next.push(with(RunState::Migrating, active, target));
                next.push(with(RunState::Migrating, target, None));
                next.push(with(RunState::Running, target, None));
            }
            RunState::Migrating => next.push(with(RunState::Running, active, None)),
            RunState::Stopping => next.push(with(RunState::Stopped, None, None)),
            RunState::Rebooting => next.push(with(RunState::Running, active, None)),
            RunState::Failed if active.is_some() => next.push(with(RunState::Failed, None, None)),
            RunState::Running | RunState::Stopped | RunState::Failed => {}
        }
        if self.fault && active.is_some() && self.state != RunState::Failed {
            // The VMM fails (it crashed, failed to boot, its sled agent lost it)...
            next.push(with(RunState::Failed, active, None));
            next.push(with(RunState::Failed, None, None));
            // ...or its migration fails (or lost its target) and it runs on, on its source.
            if matches!(self.state, RunState::Running | RunState::Migrating) {
                next.push(with(RunState::Migrating, active, None));
                next.push(with(RunState::Running, active, None));
            }
        }
        next
    }

    /// Whether nothing is under way: what every instance is at a quiet point (running with no
    /// migration, stopped, or failed and retired).
    pub fn is_settled(&self) -> bool {
        match self.state {
            RunState::Running => self.target_sled.is_none(),
            RunState::Stopped => self.active_sled.is_none(),
            RunState::Failed => self.active_sled.is_none(),
            _ => false,
        }
    }

    /// Every state time alone can lead to from this one, this one included.
    pub fn reachable(&self) -> BTreeSet<InstanceModel> {
        let mut seen = BTreeSet::from([self.clone()]);
        let mut todo = vec![self.clone()];
        while let Some(state) = todo.pop() {
            for next in state.progress() {
                if seen.insert(next.clone()) {
                    todo.push(next);
                }
            }
        }
        seen
    }

    /// Whether the real system showing `seen` is allowed from this state: time alone could
    /// lead there (a start's sled, unknown until its VMM is recorded, matches any sled).
    pub fn allows(&self, seen: &InstanceModel) -> bool {
        self.reachable().iter().any(|s| {
            s.state == seen.state
                && s.target_sled == seen.target_sled
                && (s.active_sled == seen.active_sled
                    || (s.active_sled == Some(usize::MAX) && seen.active_sled.is_some()))
        })
    }

    /// This instance right after `sled` was expunged, if it was in this state then.
    fn after_expunge(&self, sled: usize) -> InstanceModel {
        let mut after = self.clone();
        if after.target_sled == Some(sled) {
            // Its migration loses its target; it runs on, on its source (which may still
            // report its side of the migration, then fail it).
            after.target_sled = None;
            after.fault = true;
        }
        if after.active_sled == Some(sled) {
            // Its active VMM is failed and retired (a target elsewhere too).
            after.state = RunState::Failed;
            after.active_sled = None;
            after.target_sled = None;
            after.fault = false;
        }
        after
    }

    /// Whether this instance may have a VMM on `sled` (its sled unknown: anywhere).
    pub fn holds_on(&self, sled: usize) -> bool {
        self.holds().any(|h| h == sled || h == usize::MAX)
            || (self.state == RunState::Starting && self.active_sled.is_none())
    }

    /// The sleds this instance holds room on right now (its active and target VMMs'), with
    /// `usize::MAX` for a start whose VMM is not recorded yet (its room may be held anywhere).
    fn holds(&self) -> impl Iterator<Item = usize> {
        self.active_sled.into_iter().chain(self.target_sled)
    }
}

impl Model {
    /// `sleds` sleds of `threads` hardware threads and `memory_gib` GiB each; no project.
    pub fn new(sleds: usize, threads: u32, memory_gib: u32) -> Model {
        Model {
            sleds: vec![
                SledModel {
                    threads,
                    memory_gib
                };
                sleds
            ],
            expunged: BTreeSet::new(),
            projects: BTreeMap::new(),
        }
    }

    pub fn instance(&self, project: &str, name: &str) -> Option<&InstanceModel> {
        self.projects.get(project)?.get(name)
    }

    /// Threads and memory that may be held on `sled` (the most, over every state time alone
    /// can lead each instance to, except `skip`): a refusal for room is allowed only if even
    /// the fewest were free.
    fn most_held(&self, sled: usize, skip: (&str, &str)) -> (u32, u32) {
        self.held_by(skip, |i| {
            i.reachable()
                .iter()
                .any(|s| s.holds().any(|h| h == sled || h == usize::MAX))
        })
    }

    /// Threads and memory surely held on `sled` (in every state time can lead to): a
    /// placement there is allowed only if the instance fits beside them.
    fn least_held(&self, sled: usize, skip: (&str, &str)) -> (u32, u32) {
        self.held_by(skip, |i| {
            i.reachable().iter().all(|s| s.holds().any(|h| h == sled))
        })
    }

    fn held_by(&self, skip: (&str, &str), holds: impl Fn(&InstanceModel) -> bool) -> (u32, u32) {
        let mut held = (0, 0);
        for (project, instances) in &self.projects {
            for (name, instance) in instances {
                if (project.as_str(), name.as_str()) != skip && holds(instance) {
                    held.0 += instance.ncpus;
                    held.1 += instance.memory_gib;
                }
            }
        }
        held
    }

    /// Whether `instance` may fit on `sled` (`surely`: beside the most that may be held;
    /// otherwise beside the fewest that surely are).
    fn fits(&self, sled: usize, instance: &InstanceModel, who: (&str, &str), surely: bool) -> bool {
        if self.expunged.contains(&sled) {
            return false;
        }
        let held = if surely {
            self.most_held(sled, who)
        } else {
            self.least_held(sled, who)
        };
        let room = &self.sleds[sled];
        held.0 + instance.ncpus <= room.threads && held.1 + instance.memory_gib <= room.memory_gib
    }

    fn with_instance(&self, project: &str, name: &str, instance: Option<InstanceModel>) -> Model {
        let mut next = self.clone();
        let instances = next.projects.get_mut(project).expect("project in model");
        match instance {
            Some(instance) => instances.insert(name.to_string(), instance),
            None => instances.remove(name),
        };
        next
    }

    /// A start of `instance` from a state with no active VMM: on any sled with room, or
    /// refused for room if no sled surely had any.
    fn start_outcomes(&self, project: &str, name: &str, instance: &InstanceModel) -> Vec<Allowed> {
        let who = (project, name);
        let mut allowed = Vec::new();
        for sled in 0..self.sleds.len() {
            if self.fits(sled, instance, who, false) {
                let started = InstanceModel {
                    state: RunState::Starting,
                    active_sled: Some(sled),
                    target_sled: None,
                    fault: false,
                    ..instance.clone()
                };
                allowed.push(Allowed {
                    outcome: Outcome::Ok,
                    next: self.with_instance(project, name, Some(started)),
                });
            }
        }
        if !(0..self.sleds.len()).any(|sled| self.fits(sled, instance, who, true)) {
            // Refused for room: the instance stays as it was (a failed one stays failed).
            allowed.push(Allowed {
                outcome: NO_ROOM,
                next: self.clone(),
            });
        }
        allowed
    }

    /// Every outcome `op` may have from this state (or from any state time alone leads the
    /// instance it names to): see the module's docs.
    pub fn apply(&self, op: &Op) -> Vec<Allowed> {
        let refused = |outcome| {
            vec![Allowed {
                outcome,
                next: self.clone(),
            }]
        };
        match op {
            Op::ProjectCreate { project } => {
                if self.projects.contains_key(project) {
                    return refused(NAME_TAKEN);
                }
                let mut next = self.clone();
                next.projects.insert(project.clone(), BTreeMap::new());
                vec![Allowed {
                    outcome: Outcome::Ok,
                    next,
                }]
            }
            Op::ProjectDelete { project } => match self.projects.get(project) {
                None => refused(NOT_FOUND),
                Some(instances) if !instances.is_empty() => refused(INVALID),
                Some(_) => {
                    let mut next = self.clone();
                    next.projects.remove(project);
                    vec![Allowed {
                        outcome: Outcome::Ok,
                        next,
                    }]
                }
            },
            Op::Create {
                project,
                name,
                ncpus,
                memory_gib,
                start,
            } => {
                let Some(instances) = self.projects.get(project) else {
                    return refused(NOT_FOUND);
                };
                if instances.contains_key(name) {
                    return refused(NAME_TAKEN);
                }
                let stopped = InstanceModel {
                    ncpus: *ncpus,
                    memory_gib: *memory_gib,
                    state: RunState::Stopped,
                    active_sled: None,
                    target_sled: None,
                    fault: false,
                };
                let created = self.with_instance(project, name, Some(stopped.clone()));
                if *start {
                    created.start_outcomes(project, name, &stopped)
                } else {
                    vec![Allowed {
                        outcome: Outcome::Ok,
                        next: created,
                    }]
                }
            }
            Op::ExpungeSled { sled } => {
                // Each instance may have moved on before the expunge: it applies to any state
                // time could have led the instance to.
                let mut nexts = vec![self.clone()];
                nexts[0].expunged.insert(*sled);
                for (project, instances) in &self.projects {
                    for (name, instance) in instances {
                        let after: BTreeSet<InstanceModel> = instance
                            .reachable()
                            .into_iter()
                            .map(|now| now.after_expunge(*sled))
                            .collect();
                        if after.len() == 1 && after.contains(instance) {
                            continue; // untouched
                        }
                        nexts = nexts
                            .iter()
                            .flat_map(|next| {
                                after.iter().map(|a| {
                                    let mut next = next.clone();
                                    next.projects
                                        .get_mut(project)
                                        .unwrap()
                                        .insert(name.clone(), a.clone());
                                    next
                                })
                            })
                            .collect();
                    }
                }
                nexts
                    .into_iter()
                    .map(|next| Allowed {
                        outcome: Outcome::Ok,
                        next,
                    })
                    .collect()
            }
            Op::Start { project, name }
            | Op::Stop { project, name }
            | Op::Reboot { project, name }
            | Op::Migrate { project, name, .. }
            | Op::Delete { project, name } => {
                let Some(instance) = self.instance(project, name) else {
                    return refused(NOT_FOUND);
                };
                let mut allowed = Vec::new();
                for now in instance.reachable() {
                    let model = self.with_instance(project, name, Some(now.clone()));
                    for outcome in model.apply_to_instance(op, project, name, &now) {
                        if !allowed.contains(&outcome) {
                            allowed.push(outcome);
                        }
                    }
                }
                allowed
            }
        }
    }

    /// `op` on the instance `project/name`, found in state `now`.
    fn apply_to_instance(
        &self,
        op: &Op,
        project: &str,
        name: &str,
        now: &InstanceModel,
    ) -> Vec<Allowed> {
        let same = || Allowed {
            outcome: Outcome::Ok,
            next: self.clone(),
        };
        let refused = |outcome| Allowed {
            outcome,
            next: self.clone(),
        };
        let becomes = |state: RunState| Allowed {
            outcome: Outcome::Ok,
            next: self.with_instance(
                project,
                name,
                Some(InstanceModel {
                    state,
                    ..now.clone()
                }),
            ),
        };
        let has_vmm = now.active_sled.is_some() || now.state == RunState::Starting;
        match op {
            Op::Start { .. } => match now.state {
                RunState::Creating => vec![refused(CONFLICT)],
                _ if has_vmm => vec![same()],
                _ => self.start_outcomes(project, name, now),
            },
            Op::Stop { .. } => {
                if now.target_sled.is_some() || now.state == RunState::Migrating {
                    return vec![refused(CONFLICT)];
                }
                match now.state {
                    _ if !has_vmm => vec![same()],
                    // The start saga may not have registered its VMM yet (409), or has and
                    // the stop goes through.
                    RunState::Starting => vec![refused(CONFLICT), becomes(RunState::Stopping)],
                    RunState::Running | RunState::Rebooting | RunState::Stopping => {
                        vec![becomes(RunState::Stopping)]
                    }
                    // A failed VMM not yet retired: the sled agent no longer has it.
                    RunState::Failed => vec![same()],
                    _ => vec![refused(CONFLICT)],
                }
            }
            Op::Reboot { .. } => match now.state {
                RunState::Running if now.target_sled.is_none() => {
                    vec![becomes(RunState::Rebooting)]
                }
                // A migration recorded but not yet begun by the source: its sled agent
                // decides.
                RunState::Running => vec![refused(CONFLICT), becomes(RunState::Rebooting)],
                _ => vec![refused(CONFLICT)],
            },
            Op::Migrate { to, .. } => {
                if now.state != RunState::Running || now.target_sled.is_some() {
                    return vec![refused(CONFLICT)];
                }
                let source = now.active_sled.expect("a running instance has a sled");
                if *to == Some(source) {
                    return vec![refused(INVALID)];
                }
                if to.is_some_and(|sled| self.expunged.contains(&sled)) {
                    // An expunged sled takes nothing: refused for its state, not for room.
                    return vec![refused(CONFLICT)];
                }
                let candidates: Vec<usize> = match to {
                    Some(sled) => vec![*sled],
                    None => (0..self.sleds.len()).filter(|s| *s != source).collect(),
                };
                let mut allowed = Vec::new();
                for sled in &candidates {
                    if self.fits(*sled, now, ("", ""), false) {
                        let migrating = InstanceModel {
                            target_sled: Some(*sled),
                            ..now.clone()
                        };
                        allowed.push(Allowed {
                            outcome: Outcome::Ok,
                            next: self.with_instance(project, name, Some(migrating)),
                        });
                    }
                }
                if !candidates
                    .iter()
                    .any(|sled| self.fits(*sled, now, ("", ""), true))
                {
                    allowed.push(refused(NO_ROOM));
                }
                allowed
            }
            Op::Delete { .. } => {
                if has_vmm || now.state == RunState::Creating {
                    vec![refused(CONFLICT)]
                } else {
                    vec![Allowed {
                        outcome: Outcome::Ok,
                        next: self.with_instance(project, name, None),
                    }]
                }
            }
            _ => unreachable!("not an operation on one instance: {op:?}"),
        }
    }

    /// `op` issued at the same time as others, all from state `before` (this state is
    /// `before` with some of the others applied): as [`Model::apply`], and in addition a
    /// delete of an instance that another of them deleted may succeed too. Both found the
    /// instance; it is destroyed once, and destroying a destroyed instance is no error (a
    /// saga's repeat of its own step must not be one). Sequentially, the second is 404.
    pub fn apply_concurrent(&self, op: &Op, before: &Model) -> Vec<Allowed> {
        let mut allowed = self.apply(op);
        if let Op::Delete { project, name } = op
            && self.instance(project, name).is_none()
            && before.instance(project, name).is_some()
        {
            allowed.push(Allowed {
                outcome: Outcome::Ok,
                next: self.clone(),
            });
        }
        allowed
    }

    /// The states `op` may have left when its answer never reached the client (the reply
    /// was lost, or Nexus was killed while handling it): it was not applied, or it was, with
    /// any outcome [`Model::apply`] allows. What is observed next decides which.
    ///
    /// A create that also starts is two steps (the create saga, then the start): Nexus killed
    /// between them leaves the instance created and stopped.
    pub fn unanswered(&self, op: &Op) -> Vec<Model> {
        let mut allowed = self.apply(op);
        if let Op::Create {
            project,
            name,
            ncpus,
            memory_gib,
            start: true,
        } = op
        {
            allowed.extend(self.apply(&Op::Create {
                project: project.clone(),
                name: name.clone(),
                ncpus: *ncpus,
                memory_gib: *memory_gib,
                start: false,
            }));
        }
        let mut nexts = vec![self.clone()];
        for allowed in allowed {
            if !nexts.contains(&allowed.next) {
                nexts.push(allowed.next);
            }
        }
        nexts
    }

    /// Threads and GiB held on each sled by the instances as they are now (the real system's
    /// reservations must equal these at a quiet point).
    pub fn held(&self) -> Vec<(u32, u32)> {
        let sleds = self.sleds.len();
        let mut held = vec![(0, 0); sleds];
        for instance in self.projects.values().flat_map(|p| p.values()) {
            for sled in instance.holds().filter(|s| *s < sleds) {
                held[sled].0 += instance.ncpus;
                held[sled].1 += instance.memory_gib;
            }
        }
        held
    }
}

impl std::fmt::Display for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Op::ProjectCreate { project } => write!(f, "create project {project}"),
            Op::ProjectDelete { project } => write!(f, "delete project {project}"),
            Op::Create {
                project,
                name,
                ncpus,
                memory_gib,
                start,
            } => write!(
                f,
                "create {project}/{name} ({ncpus} vCPUs, {memory_gib} GiB{})",
                if *start { ", started" } else { "" }
            ),
            Op::Start { project, name } => write!(f, "start {project}/{name}"),
            Op::Stop { project, name } => write!(f, "stop {project}/{name}"),
            Op::Reboot { project, name } => write!(f, "reboot {project}/{name}"),
            Op::Migrate {
                project,
                name,
                to: None,
            } => write!(f, "migrate {project}/{name} to any sled"),
            Op::Migrate {
                project,
                name,
                to: Some(sled),
            } => write!(f, "migrate {project}/{name} to sled {sled}"),
            Op::Delete { project, name } => write!(f, "delete {project}/{name}"),
            Op::ExpungeSled { sled } => write!(f, "expunge sled {sled}"),
        }
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Ok => write!(f, "ok"),
            Outcome::Refused(status, code) => write!(f, "{status} {code}"),
        }
    }
}

impl std::fmt::Display for InstanceModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.state.label())?;
        if let Some(sled) = self.active_sled {
            write!(f, " on sled {sled}")?;
        }
        if let Some(sled) = self.target_sled {
            write!(f, " → sled {sled}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> String {
        s.to_string()
    }

    /// One sled of 8 threads and 16 GiB, project `p` with stopped `a` (4 vCPUs, 4 GiB).
    fn one_sled_one_instance() -> Model {
        let model = Model::new(1, 8, 16);
        let model = only_ok(&model, &Op::ProjectCreate { project: p("p") });
        only_ok(&model, &create("a", 4, false))
    }

    fn create(name: &str, ncpus: u32, start: bool) -> Op {
        Op::Create {
            project: p("p"),
            name: p(name),
            ncpus,
            memory_gib: 4,
            start,
        }
    }

    fn on(op: fn(String, String) -> Op, name: &str) -> Op {
        op(p("p"), p(name))
    }

    fn start(project: String, name: String) -> Op {
        Op::Start { project, name }
    }
    fn stop(project: String, name: String) -> Op {
        Op::Stop { project, name }
    }
    fn delete(project: String, name: String) -> Op {
        Op::Delete { project, name }
    }
    fn reboot(project: String, name: String) -> Op {
        Op::Reboot { project, name }
    }

    fn only_ok(model: &Model, op: &Op) -> Model {
        let allowed = model.apply(op);
        assert_eq!(allowed.len(), 1, "{op}: {allowed:?}");
        assert_eq!(allowed[0].outcome, Outcome::Ok, "{op}");
        allowed[0].next.clone()
    }

    fn outcomes(model: &Model, op: &Op) -> BTreeSet<Outcome> {
        model.apply(op).into_iter().map(|a| a.outcome).collect()
    }

    /// The instance `a` settled as time alone leads it (the only settled state reachable).
    fn settle(model: &Model, name: &str) -> Model {
        let instance = model.instance("p", name).unwrap();
        let settled: Vec<_> = instance
            .reachable()
            .into_iter()
            .filter(|s| s.is_settled())
            .collect();
        assert_eq!(settled.len(), 1, "{settled:?}");
        model.with_instance("p", name, Some(settled[0].clone()))
    }

    #[test]
    fn a_lifecycle_start_stop_delete() {
        let model = one_sled_one_instance();
        let started = only_ok(&model, &on(start, "a"));
        assert_eq!(
            started.instance("p", "a").unwrap().to_string(),
            "starting on sled 0"
        );
        let running = settle(&started, "a");
        assert_eq!(running.held(), vec![(4, 4)]);
        assert_eq!(
            outcomes(&running, &on(delete, "a")),
            BTreeSet::from([CONFLICT])
        );
        let rebooting = only_ok(&running, &on(reboot, "a"));
        let stopping = only_ok(&settle(&rebooting, "a"), &on(stop, "a"));
        let stopped = settle(&stopping, "a");
        assert_eq!(stopped.held(), vec![(0, 0)]);
        let deleted = only_ok(&stopped, &on(delete, "a"));
        assert!(deleted.instance("p", "a").is_none());
        assert_eq!(
            outcomes(&deleted, &on(start, "a")),
            BTreeSet::from([NOT_FOUND])
        );
        let gone = only_ok(&deleted, &Op::ProjectDelete { project: p("p") });
        assert!(gone.projects.is_empty());
    }

    #[test]
    fn a_stop_racing_a_start_may_be_refused_or_stop_it() {
        let started = only_ok(&one_sled_one_instance(), &on(start, "a"));
        assert_eq!(
            outcomes(&started, &on(stop, "a")),
            BTreeSet::from([Outcome::Ok, CONFLICT])
        );
        // Reboot: refused while starting, allowed once it may be running.
        assert_eq!(
            outcomes(&started, &on(reboot, "a")),
            BTreeSet::from([Outcome::Ok, CONFLICT])
        );
    }

    #[test]
    fn capacity_decides_starts_and_migrations() {
        let model = one_sled_one_instance();
        let model = only_ok(&model, &create("b", 6, false));
        let running = settle(&only_ok(&model, &on(start, "a")), "a");
        // 4 + 6 > 8 threads: refused for room, and only that.
        assert_eq!(
            outcomes(&running, &on(start, "b")),
            BTreeSet::from([NO_ROOM])
        );
        // While `a` is stopping its room may or may not be free yet.
        let stopping = only_ok(&running, &on(stop, "a"));
        assert_eq!(
            outcomes(&stopping, &on(start, "b")),
            BTreeSet::from([Outcome::Ok, NO_ROOM])
        );
        // Once stopped, there is room: a refusal is not allowed (a reservation not released
        // shows as exactly this).
        let stopped = settle(&stopping, "a");
        assert_eq!(
            outcomes(&stopped, &on(start, "b")),
            BTreeSet::from([Outcome::Ok])
        );
        // A migration has no other sled to go to.
        let migrate = Op::Migrate {
            project: p("p"),
            name: p("a"),
            to: None,
        };
        assert_eq!(outcomes(&running, &migrate), BTreeSet::from([NO_ROOM]));
        let to_itself = Op::Migrate {
            project: p("p"),
            name: p("a"),
            to: Some(0),
        };
        assert_eq!(outcomes(&running, &to_itself), BTreeSet::from([INVALID]));
    }

    #[test]
    fn a_migration_moves_the_instance_and_its_room() {
        let model = Model::new(2, 8, 16);
        let model = only_ok(&model, &Op::ProjectCreate { project: p("p") });
        let model = only_ok(&model, &create("a", 4, false));
        let allowed = model.apply(&on(start, "a"));
        assert_eq!(allowed.len(), 2, "either sled");
        let running = settle(&allowed[0].next, "a");
        assert_eq!(running.held(), vec![(4, 4), (0, 0)]);
        let migrate = Op::Migrate {
            project: p("p"),
            name: p("a"),
            to: None,
        };
        let migrating = only_ok(&running, &migrate);
        assert_eq!(migrating.held(), vec![(4, 4), (4, 4)]);
        // Refused while it migrates; allowed once the migration may have finished.
        for op in [on(stop, "a"), migrate.clone()] {
            assert_eq!(
                outcomes(&migrating, &op),
                BTreeSet::from([Outcome::Ok, CONFLICT])
            );
        }
        let moved = settle(&migrating, "a");
        assert_eq!(
            moved.instance("p", "a").unwrap().to_string(),
            "running on sled 1"
        );
        assert_eq!(moved.held(), vec![(0, 0), (4, 4)]);
        // Without a fault, falling back to the source is not allowed.
        let back = InstanceModel {
            target_sled: None,
            ..running.instance("p", "a").unwrap().clone()
        };
        assert!(!migrating.instance("p", "a").unwrap().allows(&back));
    }

    #[test]
    fn expunging_a_sled_fails_its_instances() {
        let model = Model::new(2, 8, 16);
        let model = only_ok(&model, &Op::ProjectCreate { project: p("p") });
        let model = model.apply(&create("a", 4, true))[0].next.clone();
        let sled = model.instance("p", "a").unwrap().active_sled.unwrap();
        let expunged = only_ok(&settle(&model, "a"), &Op::ExpungeSled { sled });
        assert_eq!(expunged.instance("p", "a").unwrap().state, RunState::Failed);
        assert_eq!(expunged.held(), vec![(0, 0), (0, 0)]);
        let to_expunged = Op::Migrate {
            project: p("p"),
            name: p("a"),
            to: Some(sled),
        };
        assert_eq!(
            outcomes(&expunged, &to_expunged),
            BTreeSet::from([CONFLICT])
        );
        // A start now goes to the other sled only.
        let allowed = expunged.apply(&on(start, "a"));
        assert_eq!(allowed.len(), 1);
        assert_ne!(
            allowed[0].next.instance("p", "a").unwrap().active_sled,
            Some(sled)
        );
    }

    #[test]
    fn names_and_projects() {
        let model = one_sled_one_instance();
        assert_eq!(
            outcomes(&model, &create("a", 2, false)),
            BTreeSet::from([NAME_TAKEN])
        );
        assert_eq!(
            outcomes(&model, &Op::ProjectCreate { project: p("p") }),
            BTreeSet::from([NAME_TAKEN])
        );
        assert_eq!(
            outcomes(&model, &Op::ProjectDelete { project: p("p") }),
            BTreeSet::from([INVALID])
        );
        assert_eq!(
            outcomes(&model, &Op::ProjectDelete { project: p("q") }),
            BTreeSet::from([NOT_FOUND])
        );
    }

    #[test]
    fn concurrent_deletes_of_one_instance_may_both_succeed() {
        let before = one_sled_one_instance();
        let deleted = only_ok(&before, &on(delete, "a"));
        assert_eq!(
            outcomes(&deleted, &on(delete, "a")),
            BTreeSet::from([NOT_FOUND])
        );
        let concurrent: BTreeSet<Outcome> = deleted
            .apply_concurrent(&on(delete, "a"), &before)
            .into_iter()
            .map(|a| a.outcome)
            .collect();
        assert_eq!(concurrent, BTreeSet::from([NOT_FOUND, Outcome::Ok]));
    }

    #[test]
    fn an_unanswered_operation_may_or_may_not_have_been_applied() {
        let running = settle(&only_ok(&one_sled_one_instance(), &on(start, "a")), "a");
        let nexts = running.unanswered(&on(stop, "a"));
        let states: BTreeSet<RunState> = nexts
            .iter()
            .map(|m| m.instance("p", "a").unwrap().state)
            .collect();
        assert_eq!(
            states,
            BTreeSet::from([RunState::Running, RunState::Stopping])
        );
        // A create whose answer was lost: the instance may not exist, or exist stopped.
        let created = running.unanswered(&create("b", 2, false));
        assert_eq!(created.len(), 2);
        // One that also starts may be created and not (yet) started: two steps.
        let started = running.unanswered(&create("b", 2, true));
        let b_states: BTreeSet<Option<RunState>> = started
            .iter()
            .map(|m| m.instance("p", "b").map(|b| b.state))
            .collect();
        assert_eq!(
            b_states,
            BTreeSet::from([None, Some(RunState::Stopped), Some(RunState::Starting)])
        );
        assert!(created.iter().any(|m| m.instance("p", "b").is_none()));
        assert!(created.iter().any(|m| {
            m.instance("p", "b")
                .is_some_and(|b| b.state == RunState::Stopped)
        }));
    }

    #[test]
    fn a_fault_lets_any_vmm_fail() {
        let model = settle(&only_ok(&one_sled_one_instance(), &on(start, "a")), "a");
        let instance = model.instance("p", "a").unwrap().clone();
        let failed = InstanceModel {
            state: RunState::Failed,
            active_sled: None,
            ..instance.clone()
        };
        assert!(!instance.allows(&failed));
        let faulted = InstanceModel {
            fault: true,
            ..instance
        };
        assert!(faulted.allows(&InstanceModel {
            fault: true,
            ..failed
        }));
    }
}
