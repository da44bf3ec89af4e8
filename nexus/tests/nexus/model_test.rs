//! The reference model (`halyard_nexus_test_utils::model`) against the real system: generated
//! sequences of operations, faults and waits (`proptest-state-machine`), run on a Nexus
//! process with a PostgreSQL cluster of its own and three simulated sled agents over real HTTP
//! ([`ModelSystem`]), so that Nexus can really be killed and the database really stopped.
//!
//! After every step the real system's answer must be one the model allows for that operation
//! from the state it was last seen in, and what it shows afterwards (each instance's
//! `run_state` from the external API, its active and target VMM's sleds from the database,
//! as `omdb db instances` shows them) must be a state the model's allowed next state can
//! reach by time alone; the test then goes on from what it saw. At every quiet point (a
//! `wait` step) every instance must be settled and the invariant checker clean. A step may
//! issue several operations at once (from different clients): their answers together must be
//! those of some order of the operations.
//!
//! Faults: a VMM crash, a migration phase failing on either side, a lost `finish` reply between
//! sled agents, a sled agent restarted, Nexus killed (SIGKILL, possibly while it handles a
//! request, or aimed at a saga: the saga log is stalled so that Nexus dies just before a saga
//! logs its next event) and a new one started that must resume every unfinished saga at once,
//! the database stopped for a while (requests then must be refused 503 and change nothing), and
//! a user's request whose reply is lost (it reached Nexus and was handled; the model allows
//! either outcome until the next observation settles which), and a sled agent's report of a
//! VMM from a generation ago arriving late (nothing may change).
//!
//! A failure is shrunk to the shortest sequence that still fails and printed as a story, one
//! line per step, with the seed and the command that replays it. CI runs a few cases of a
//! fixed seed; to run longer:
//! `HALYARD_MODEL_CASES=200 HALYARD_MODEL_SEED=$RANDOM cargo test -j2 -p halyard-nexus --test nexus model_test:: -- --nocapture`
//! (`HALYARD_MODEL_VERBOSE=1` prints every case's story as it passes).

use crate::context::TestContext;
use crate::model_system::{LostReplyProxy, ModelSystem};
use halyard_common::ids::SledUuid;
use halyard_common::{InstanceNexusState, InstanceState, VmmState};
use halyard_nexus_test_utils::model::{InstanceModel, Model, Op, Outcome, RunState};
use halyard_sled_agent::SimConfig;
use halyard_sled_agent_api::{MigrationPhase, SimFault};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed, TestError, TestRunner};
use proptest_state_machine::{ReferenceStateMachine, StateMachineTest};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Sleds in every case (each `SLED_THREADS` threads and `SLED_RAM_GIB` GiB).
const SLEDS: usize = 3;
const PROJECTS: [&str; 2] = ["p0", "p1"];
const NAMES: [&str; 3] = ["a", "b", "c"];
/// CI's run: this many cases of this seed, each of up to `MAX_STEPS` steps.
const DEFAULT_CASES: u32 = 10;
const DEFAULT_SEED: u64 = 16;
const MAX_STEPS: usize = 24;

/// A VMM as the database has it.
struct VmmRow {
    id: halyard_common::ids::VmmUuid,
    sled: SledUuid,
    generation: u64,
}

/// Nexus kills in this process (every case, every run of one), and how many of them found an
/// unfinished saga in the log: killed mid-saga.
static KILLS: AtomicUsize = AtomicUsize::new(0);
static KILLS_MID_SAGA: AtomicUsize = AtomicUsize::new(0);

/// One step of a story.
#[derive(Clone, PartialEq, Eq)]
pub enum Step {
    /// One operation, answered before the next step.
    Op(Op),
    /// Several operations at once, from different clients.
    Together(Vec<Op>),
    /// Wait until nothing is in flight, then check every instance is settled and the
    /// invariant checker is clean.
    WaitQuiet,
    /// A short pause (milliseconds): time passes, transitions go on.
    Pause(u64),
    /// A fault injected into the running system.
    Fault(Fault),
}

/// The faults a step injects (each into whatever the instance has right then; nothing if it
/// has nothing to inject into).
#[derive(Clone, PartialEq, Eq)]
pub enum Fault {
    /// The instance's active VMM crashes now.
    Crash { project: String, name: String },
    /// The instance's migration (under way, or its VMM's next) fails at this phase, on the
    /// source's side or the target's.
    FailMigration {
        project: String,
        name: String,
        target_side: bool,
        phase: MigrationPhase,
    },
    /// The next migration out of the instance's active VMM loses the target's reply to
    /// `finish` (the migration must still complete).
    LoseFinishReply { project: String, name: String },
    /// The sled agent of this sled restarts, losing every VMM it ran.
    RestartSled { sled: usize },
    /// Nexus is killed (SIGKILL) `after_ms` after `during` is sent (if any), and a new Nexus
    /// with the same id starts on the same database, resuming its unfinished sagas.
    KillNexus { during: Option<Op>, after_ms: u64 },
    /// An operation that starts a saga is sent and Nexus is killed while its saga runs, just
    /// before the saga logs more than `after_events` events (modulo the events its DAG logs
    /// running forward); a new Nexus must resume what was unfinished. (If the saga ends
    /// before that, unwinding, Nexus is killed once it has answered.)
    KillNexusMidSaga { aim: Aim, after_events: u32 },
    /// The database stops; `during` (if any) is sent while it is down and must be refused
    /// 503 without effect; after `down_ms` it starts again.
    StopDatabase { during: Option<Op>, down_ms: u64 },
    /// `op` reaches Nexus and is handled, but its reply is lost on the way back.
    LoseReply { op: Op },
    /// A report of the instance's active VMM from a generation ago arrives late (its sled
    /// agent's, delayed in the network).
    StaleReport { project: String, name: String },
}

/// The operation an aimed Nexus kill sends.
#[derive(Clone, PartialEq, Eq)]
pub enum Aim {
    /// This operation.
    At(Op),
    /// Of the operations that start a saga from the model's state then (a create-and-start of
    /// each free name, a start and a delete of each stopped instance, a migration of each
    /// running one, in name order), the one at this index (modulo their number).
    Pick(usize),
}

/// The kinds of fault, as the run's summary counts them.
const FAULT_KINDS: [&str; 9] = [
    "VMM crashes",
    "migration phase failures",
    "lost finish replies",
    "sled agent restarts",
    "Nexus kills",
    "Nexus kills aimed at a saga",
    "database outages",
    "lost user replies",
    "stale VMM reports",
];

impl Fault {
    fn kind(&self) -> &'static str {
        FAULT_KINDS[match self {
            Fault::Crash { .. } => 0,
            Fault::FailMigration { .. } => 1,
            Fault::LoseFinishReply { .. } => 2,
            Fault::RestartSled { .. } => 3,
            Fault::KillNexus { .. } => 4,
            Fault::KillNexusMidSaga { .. } => 5,
            Fault::StopDatabase { .. } => 6,
            Fault::LoseReply { .. } => 7,
            Fault::StaleReport { .. } => 8,
        }]
    }
}

impl std::fmt::Debug for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fault::Crash { project, name } => write!(f, "fault: crash {project}/{name}'s VMM"),
            Fault::FailMigration {
                project,
                name,
                target_side,
                phase,
            } => write!(
                f,
                "fault: {project}/{name}'s migration fails at {phase:?} on the {} side",
                if *target_side { "target" } else { "source" }
            ),
            Fault::LoseFinishReply { project, name } => {
                write!(
                    f,
                    "fault: {project}/{name}'s next migration loses finish's reply"
                )
            }
            Fault::RestartSled { sled } => write!(f, "fault: sled agent {sled} restarts"),
            Fault::KillNexus {
                during: Some(op),
                after_ms,
            } => write!(
                f,
                "fault: Nexus killed {after_ms} ms after \"{op}\" is sent, then restarted"
            ),
            Fault::KillNexus { during: None, .. } => {
                write!(f, "fault: Nexus killed, then restarted")
            }
            Fault::KillNexusMidSaga { aim, after_events } => {
                write!(f, "fault: Nexus killed in the saga of ")?;
                match aim {
                    Aim::At(op) => write!(f, "\"{op}\"")?,
                    Aim::Pick(n) => write!(f, "saga-starting operation #{n}")?,
                }
                write!(
                    f,
                    " once it has {after_events} events logged, then restarted"
                )
            }
            Fault::StopDatabase { during, down_ms } => {
                write!(f, "fault: the database stops for {down_ms} ms")?;
                match during {
                    Some(op) => write!(f, "; meanwhile \"{op}\""),
                    None => Ok(()),
                }
            }
            Fault::LoseReply { op } => write!(f, "fault: \"{op}\" whose reply is lost"),
            Fault::StaleReport { project, name } => write!(
                f,
                "fault: a stale report of {project}/{name}'s VMM arrives late"
            ),
        }
    }
}

impl std::fmt::Debug for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Step::Op(op) => write!(f, "{op}"),
            Step::Together(ops) => {
                let ops: Vec<String> = ops.iter().map(ToString::to_string).collect();
                write!(f, "at once: {}", ops.join(" | "))
            }
            Step::WaitQuiet => write!(f, "wait until quiet"),
            Step::Pause(ms) => write!(f, "pause {ms} ms"),
            Step::Fault(fault) => write!(f, "{fault:?}"),
        }
    }
}

/// The operations that start a saga from `model`'s state (see [`Aim::Pick`]).
fn saga_starting_ops(model: &Model) -> Vec<Op> {
    let mut ops = Vec::new();
    for (project, instances) in &model.projects {
        for name in NAMES {
            let (project, name) = (project.clone(), name.to_string());
            match instances.get(&name).map(|instance| instance.state) {
                None => ops.push(create(project, name, 0, false, true)),
                Some(RunState::Stopped) => {
                    ops.push(Op::Start {
                        project: project.clone(),
                        name: name.clone(),
                    });
                    ops.push(Op::Delete { project, name });
                }
                Some(RunState::Running) => ops.push(Op::Migrate {
                    project,
                    name,
                    to: None,
                }),
                Some(_) => {}
            }
        }
    }
    ops
}

/// A project name: mostly `p0` (which every case creates first), so most operations find
/// their instance.
fn project_name() -> impl Strategy<Value = String> {
    prop_oneof![6 => Just(PROJECTS[0]), 1 => Just(PROJECTS[1])].prop_map(str::to_string)
}

/// A create of one of three sizes (by `sled`) and two memories (by `large`).
fn create(project: String, name: String, sled: usize, large: bool, start: bool) -> Op {
    Op::Create {
        project,
        name,
        ncpus: [2, 4, 6][sled],
        memory_gib: if large { 4 } else { 1 },
        start,
    }
}

fn instance_op() -> impl Strategy<Value = Op> {
    (instance_name(), 0..100u32, 0..SLEDS, any::<bool>()).prop_map(
        |((project, name), pick, sled, flag)| match pick {
            0..=29 => create(project, name, sled, flag, pick % 3 != 0),
            30..=49 => Op::Start { project, name },
            50..=62 => Op::Stop { project, name },
            63..=69 => Op::Reboot { project, name },
            70..=89 => Op::Migrate {
                project,
                name,
                to: flag.then_some(sled),
            },
            _ => Op::Delete { project, name },
        },
    )
}

fn instance_name() -> impl Strategy<Value = (String, String)> {
    (project_name(), prop::sample::select(&NAMES[..])).prop_map(|(p, n)| (p, n.to_string()))
}

fn fault() -> impl Strategy<Value = Fault> {
    let phase = prop::sample::select(&MigrationPhase::ALL[..]);
    prop_oneof![
        3 => instance_name().prop_map(|(project, name)| Fault::Crash { project, name }),
        3 => (instance_name(), any::<bool>(), phase).prop_map(
            |((project, name), target_side, phase)| Fault::FailMigration {
                project,
                name,
                target_side,
                phase,
            }
        ),
        2 => instance_name()
            .prop_map(|(project, name)| Fault::LoseFinishReply { project, name }),
        2 => (0..SLEDS).prop_map(|sled| Fault::RestartSled { sled }),
        // Mostly while a request is in flight: killed before it reaches Nexus, while Nexus
        // handles it, or after it answered.
        1 => (prop::option::weighted(0.8, instance_op()), 0..60u64)
            .prop_map(|(during, after_ms)| Fault::KillNexus { during, after_ms }),
        // Aimed: while the saga an operation starts runs (anywhere from its first step on).
        3 => (0..12usize, 0..20u32).prop_map(|(pick, after_events)| Fault::KillNexusMidSaga {
            aim: Aim::Pick(pick),
            after_events,
        }),
        // A request during the outage waits for Nexus's pool to give up (5 s) before it is
        // refused: costly, so only some outages have one.
        2 => (prop::option::weighted(0.4, instance_op()), 50..1500u64)
            .prop_map(|(during, down_ms)| Fault::StopDatabase { during, down_ms }),
        3 => instance_op().prop_map(|op| Fault::LoseReply { op }),
        2 => instance_name().prop_map(|(project, name)| Fault::StaleReport { project, name }),
    ]
}

fn project_op() -> impl Strategy<Value = Op> {
    (project_name(), any::<bool>()).prop_map(|(project, create)| {
        if create {
            Op::ProjectCreate { project }
        } else {
            Op::ProjectDelete { project }
        }
    })
}

/// What generates the steps. Its state is the case's setup (how slow the simulated sleds
/// are) and what keeps a sequence meaningful when shrunk: which sled was expunged (at most
/// one). Everything the real system may do is decided by the model in the harness, from
/// what it observes.
pub struct Steps;

/// A case's setup and the one sled it may expunge.
#[derive(Debug, Clone)]
pub struct Setup {
    /// The sim sleds' delays (ms): start, stop, reboot, and each migration phase.
    pub delays_ms: [u64; 4],
    pub expunged: Option<usize>,
}

impl ReferenceStateMachine for Steps {
    type State = Setup;
    type Transition = Step;

    fn init_state() -> BoxedStrategy<Setup> {
        // Fast and slow sleds: how far a transition gets before the next step depends on it.
        (5..150u64, 5..150u64, 5..150u64, 1..40u64)
            .prop_map(|(start, stop, reboot, phase)| Setup {
                delays_ms: [start, stop, reboot, phase],
                expunged: None,
            })
            .boxed()
    }

    fn transitions(setup: &Setup) -> BoxedStrategy<Step> {
        let expunge = if setup.expunged.is_none() { 2 } else { 0 };
        prop_oneof![
            30 => instance_op().prop_map(Step::Op),
            4 => project_op().prop_map(Step::Op),
            expunge => (0..SLEDS).prop_map(|sled| Step::Op(Op::ExpungeSled { sled })),
            6 => prop::collection::vec(instance_op(), 2..=3).prop_map(Step::Together),
            6 => Just(Step::WaitQuiet),
            4 => (0..200u64).prop_map(Step::Pause),
            8 => fault().prop_map(Step::Fault),
        ]
        .boxed()
    }

    fn apply(mut setup: Setup, step: &Step) -> Setup {
        if let Step::Op(Op::ExpungeSled { sled }) = step {
            setup.expunged = Some(*sled);
        }
        setup
    }

    fn preconditions(setup: &Setup, step: &Step) -> bool {
        match step {
            Step::Op(Op::ExpungeSled { .. }) => setup.expunged.is_none(),
            _ => true,
        }
    }
}

/// The real system, the model of it as last seen, and the story so far.
pub struct Harness {
    runtime: tokio::runtime::Runtime,
    system: Option<ModelSystem>,
    /// Sled ids by model index (a closed, expunged sled keeps its index).
    sled_ids: Vec<SledUuid>,
    clients: Vec<reqwest::Client>,
    base: String,
    model: Model,
    story: Vec<String>,
}

impl Drop for Harness {
    /// Closes the sled agents' servers before the runtime goes (dropped with their requests'
    /// tasks still in the runtime, dropshot panics on the cancelled tasks), then Nexus and the
    /// database.
    fn drop(&mut self) {
        if let Some(system) = self.system.take() {
            self.runtime.block_on(system.close());
        }
    }
}

impl Harness {
    pub fn new(setup: &Setup) -> Harness {
        let begun = Instant::now();
        let [start, stop, reboot, phase] = setup.delays_ms;
        let sim = SimConfig {
            start_delay_ms: start,
            stop_delay_ms: stop,
            reboot_delay_ms: reboot,
            migration_phase_delay_ms: phase,
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(4)
            .enable_all()
            .build()
            .unwrap();
        let system = runtime
            .block_on(ModelSystem::start(SLEDS, sim))
            .unwrap_or_else(|e| panic!("starting the system: {e}"));
        let sled_ids = system.sleds.iter().map(|s| s.agent().id()).collect();
        let base = format!("http://{}", system.external);
        let clients = (0..3)
            .map(|_| crate::authn_support::http_client(&system.token))
            .collect();
        let mut harness = Harness {
            runtime,
            system: Some(system),
            sled_ids,
            clients,
            base,
            model: Model::new(
                SLEDS,
                crate::context::SLED_THREADS,
                crate::context::SLED_RAM_GIB,
            ),
            story: vec![format!(
                "  0. sleds: start {start} ms, stop {stop} ms, reboot {reboot} ms, migration \
                 phase {phase} ms  [up in {:.0?}]",
                begun.elapsed()
            )],
        };
        // Every case starts with project p0, so most steps do something.
        harness.step(Step::Op(Op::ProjectCreate {
            project: "p0".to_string(),
        }));
        harness
    }

    fn system(&self) -> &ModelSystem {
        self.system.as_ref().unwrap()
    }

    /// Runs one step and checks it against the model; a failure panics with the story.
    pub fn step(&mut self, step: Step) {
        self.story
            .push(format!("{:>3}. {step:?}", self.story.len() + 1));
        let started = Instant::now();
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| self.run(&step)));
        let failure = match result {
            Ok(Ok(line)) => {
                if let Some(last) = self.story.last_mut() {
                    last.push_str(&format!("  →  {line}  [{:.0?}]", started.elapsed()));
                }
                return;
            }
            Ok(Err(failure)) => failure,
            Err(panic) => panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "a panic".to_string()),
        };
        let logs = match &self.system {
            Some(system) if std::env::var_os("HALYARD_MODEL_NEXUS_LOGS").is_some() => {
                format!("\n\n{}", system.nexus_logs())
            }
            _ => String::new(),
        };
        panic!(
            "the real system left the model at the last step:\n{}\n\n{failure}{logs}",
            self.story.join("\n")
        );
    }

    /// One step: what happened, in a line for the story, or why the model disallows it.
    fn run(&mut self, step: &Step) -> Result<String, String> {
        match step {
            Step::Op(op) => {
                if let Op::ExpungeSled { sled } = op {
                    // A sled the operator expunges is gone: its sled agent stops first.
                    self.close_sled(*sled);
                }
                let outcome = self.runtime.block_on(self.send(0, op))?;
                self.check_answer(op, Some(outcome))?;
                Ok(format!("{outcome}{}", self.state_of(op)))
            }
            Step::Together(ops) => {
                let outcomes = self.runtime.block_on(async {
                    let sends = ops.iter().enumerate().map(|(i, op)| self.send(i, op));
                    futures::future::join_all(sends).await
                });
                let outcomes = outcomes.into_iter().collect::<Result<Vec<_>, _>>()?;
                let allowed = interleavings(&self.model, ops, &outcomes);
                let line: Vec<String> = outcomes.iter().map(ToString::to_string).collect();
                if allowed.is_empty() {
                    return Err(format!(
                        "answers [{}]: no order of the operations allows them from\n{}",
                        line.join(" | "),
                        describe(&self.model)
                    ));
                }
                self.observe_against(&allowed, false)?;
                let states: String = ops.iter().map(|op| self.state_of(op)).collect();
                Ok(format!("{}{states}", line.join(" | ")))
            }
            Step::WaitQuiet => {
                // The checker first waits for the quiet point; the model's own checks run
                // too whether or not the checker found a violation, so a failure says what
                // each of them saw.
                let checker = self.runtime.block_on(self.system().quiet_and_consistent());
                let current = vec![self.model.clone()];
                let model = self
                    .observe_against(&current, true)
                    .and_then(|()| self.reservations_as_modelled());
                match (model, checker) {
                    (Ok(()), Ok(())) => Ok("quiet, invariants hold".to_string()),
                    (model, checker) => {
                        let mut failures = Vec::new();
                        if let Err(reason) = model {
                            failures.push(format!("the model: {reason}"));
                        }
                        if let Err(message) = checker {
                            failures.push(format!("the invariant checker: {message}"));
                        }
                        Err(failures.join("\n"))
                    }
                }
            }
            Step::Fault(Fault::KillNexus { during, after_ms }) => {
                self.kill_nexus(during.as_ref(), *after_ms)
            }
            Step::Fault(Fault::KillNexusMidSaga { aim, after_events }) => {
                let op = match aim {
                    Aim::At(op) => Some(op.clone()),
                    Aim::Pick(n) => {
                        let ops = saga_starting_ops(&self.model);
                        (!ops.is_empty()).then(|| ops[n % ops.len()].clone())
                    }
                };
                match op {
                    Some(op) => {
                        let line = self.kill_nexus_mid_saga(&op, *after_events)?;
                        Ok(format!("\"{op}\": {line}"))
                    }
                    None => self.kill_nexus(None, 0),
                }
            }
            Step::Fault(Fault::StopDatabase { during, down_ms }) => {
                self.stop_database(during.as_ref(), *down_ms)
            }
            Step::Fault(Fault::LoseReply { op }) => self.lose_reply(op),
            Step::Fault(Fault::StaleReport { project, name }) => {
                self.replay_stale_report(project, name)
            }
            Step::Fault(Fault::RestartSled { sled }) => {
                let line = self.restart_sled(*sled)?;
                self.observe_unchanged()?;
                Ok(line)
            }
            Step::Fault(fault) => {
                let line = self.inject(fault);
                self.observe_unchanged()?;
                Ok(line)
            }
            Step::Pause(ms) => {
                let pause = Duration::from_millis(*ms);
                self.runtime
                    .block_on(async move { tokio::time::sleep(pause).await });
                self.observe_unchanged()?;
                Ok(String::new())
            }
        }
    }

    /// At a quiet point: each sled's reserved totals are exactly what the model's instances
    /// hold there (their active and target VMMs' sizes).
    fn reservations_as_modelled(&self) -> Result<(), String> {
        let held = self.model.held();
        for (sled, id) in self.sled_ids.iter().enumerate() {
            let row = self.system().sql(&format!(
                "SELECT reserved_hardware_threads, reserved_physical_ram / 1073741824 \
                 FROM sled WHERE id = '{id}'"
            ));
            let (threads, gib) = row.trim().split_once('|').expect("a sled row");
            let reserved: (u32, u32) = (threads.parse().unwrap(), gib.parse().unwrap());
            if reserved != held[sled] {
                return Err(format!(
                    "sled {sled} has {} threads and {} GiB reserved; the model's instances \
                     hold {} threads and {} GiB there:\n{}",
                    reserved.0,
                    reserved.1,
                    held[sled].0,
                    held[sled].1,
                    describe(&self.model)
                ));
            }
        }
        Ok(())
    }

    /// Injects a fault into a VMM (a crash, a failed migration phase, a lost `finish` reply);
    /// marks in the model what it may make fail. Returns what it did.
    fn inject(&mut self, fault: &Fault) -> String {
        let (project, name, sim_fault, target_side, marks) = match fault {
            Fault::RestartSled { .. }
            | Fault::KillNexus { .. }
            | Fault::KillNexusMidSaga { .. }
            | Fault::StopDatabase { .. }
            | Fault::LoseReply { .. }
            | Fault::StaleReport { .. } => {
                unreachable!("run separately: {fault:?}")
            }
            Fault::Crash { project, name } => (project, name, SimFault::Crash, false, true),
            Fault::FailMigration {
                project,
                name,
                target_side,
                phase,
            } => (
                project,
                name,
                SimFault::FailMigration { phase: *phase },
                *target_side,
                true,
            ),
            // A lost reply must change nothing anyone sees: nothing may fail.
            Fault::LoseFinishReply { project, name } => {
                (project, name, SimFault::LoseNextFinishReply, false, false)
            }
        };
        let pointer = if target_side {
            "target_propolis_id"
        } else {
            "active_propolis_id"
        };
        let Some(VmmRow { id: vmm, sled, .. }) = self.vmm_of(project, name, pointer) else {
            return "nothing to inject into".to_string();
        };
        // Marked before injecting: the fault may strike before anything is observed.
        if marks
            && let Some(instance) = self
                .model
                .projects
                .get_mut(project)
                .and_then(|p| p.get_mut(name))
        {
            instance.fault = true;
        }
        let Some(client) = self.system().sled_client(sled) else {
            return "refused (its sled agent is gone)".to_string();
        };
        let injected = self
            .runtime
            .block_on(client.vmm_inject_fault(&vmm, &sim_fault));
        match injected {
            Ok(_) => "injected".to_string(),
            Err(e) => format!("refused ({e})"),
        }
    }

    /// The VMM instance `project/name`'s `pointer` column names, if any.
    fn vmm_of(&self, project: &str, name: &str, pointer: &str) -> Option<VmmRow> {
        let row = self.system().sql(&format!(
            "SELECT v.id, v.sled_id, v.generation FROM instance i \
             JOIN project p ON p.id = i.project_id JOIN vmm v ON v.id = i.{pointer} \
             WHERE i.time_deleted IS NULL AND p.time_deleted IS NULL \
               AND p.name = '{project}' AND i.name = '{name}'"
        ));
        let fields: Vec<&str> = row.trim().split('|').collect();
        let [id, sled, generation] = fields[..] else {
            return None;
        };
        Some(VmmRow {
            id: id.parse().unwrap(),
            sled: sled.parse().unwrap(),
            generation: generation.parse().unwrap(),
        })
    }

    /// Sends Nexus, as the sled agent of the instance's active VMM, that VMM's report of a
    /// generation ago (saying `starting`), as a report delayed in the network arrives: Nexus
    /// has a newer one and must change nothing.
    fn replay_stale_report(&mut self, project: &str, name: &str) -> Result<String, String> {
        let Some(vmm) = self.vmm_of(project, name, "active_propolis_id") else {
            return Ok("no VMM to report".to_string());
        };
        if vmm.generation < 2 {
            return Ok("no older report".to_string());
        }
        let report = json!({
            "vmm_state": {
                "state": "starting",
                "generation": vmm.generation - 1,
                "time_updated": chrono::Utc::now(),
            },
            "migration_in": null,
            "migration_out": null,
        });
        let url = format!("https://{}/vmms/{}", self.system().internal, vmm.id);
        let sled = crate::context::Role::Sled(vmm.sled);
        let sent = self.runtime.block_on(async {
            let http = halyard_tls::pki::test_pki().http_client(sled, halyard_tls::NEXUS_NAME);
            http.unwrap().put(url).json(&report).send().await
        });
        let answer = match sent {
            Ok(response) => response.status().to_string(),
            Err(e) => format!("no answer ({e})"),
        };
        self.observe_unchanged()?;
        Ok(format!(
            "generation {} replayed; Nexus answered {answer}",
            vmm.generation - 1
        ))
    }

    /// Restarts sled agent `sled` (unless it was expunged): it comes back knowing no VMM, and
    /// waits until Nexus has learnt that (its registration reconciled) before going on.
    fn restart_sled(&mut self, sled: usize) -> Result<String, String> {
        let id = self.sled_ids[sled];
        if !self.system().sleds.iter().any(|s| s.agent().id() == id) {
            return Ok("expunged: nothing to restart".to_string());
        }
        for instance in self
            .model
            .projects
            .values_mut()
            .flat_map(|p| p.values_mut())
        {
            if instance.holds_on(sled) {
                instance.fault = true;
            }
        }
        let system = self.system.as_mut().unwrap();
        self.runtime.block_on(system.restart_sled(id));
        let system = self.system();
        self.runtime.block_on(
            system.eventually("Nexus reconciled the restarted sled", || {
                system
                    .sql(&format!(
                        "SELECT count(*) FROM vmm WHERE sled_id = '{id}' \
                         AND time_deleted IS NULL \
                         AND state NOT IN ('creating', 'destroyed', 'failed', 'saga_unwound')"
                    ))
                    .trim()
                    == "0"
            }),
        )?;
        Ok("restarted; Nexus reconciled it".to_string())
    }

    /// Checks `op`'s answer (`None`: none came back) against the answers the model allows
    /// from its state, then what the system shows against the states that answer may lead
    /// to: the check of every step that sends one operation.
    fn check_answer(&mut self, op: &Op, answer: Option<Outcome>) -> Result<(), String> {
        let allowed: Vec<Model> = match answer {
            Some(outcome) => self
                .model
                .apply(op)
                .into_iter()
                .filter(|a| a.outcome == outcome)
                .map(|a| a.next)
                .collect(),
            None => self.model.unanswered(op),
        };
        if allowed.is_empty() {
            let expected: Vec<String> = self
                .model
                .apply(op)
                .iter()
                .map(|a| a.outcome.to_string())
                .collect();
            return Err(format!(
                "{op} answered {}; the model allows only [{}] from\n{}",
                answer.map_or("nothing".to_string(), |outcome| outcome.to_string()),
                expected.join(", "),
                describe(&self.model)
            ));
        }
        self.observe_against(&allowed, false)
    }

    /// Checks that what the system shows now is where time alone may have taken the model's
    /// state (no operation was sent).
    fn observe_unchanged(&mut self) -> Result<(), String> {
        let current = vec![self.model.clone()];
        self.observe_against(&current, false)
    }

    /// Kills Nexus `after_ms` after sending `during` (if any), starts a new one, and checks
    /// what it shows: the request may have been answered, or not (then applied or not).
    fn kill_nexus(&mut self, during: Option<&Op>, after_ms: u64) -> Result<String, String> {
        let system = self.system();
        let answer = self.runtime.block_on(async {
            let kill = async {
                tokio::time::sleep(Duration::from_millis(after_ms)).await;
                system.kill_nexus();
            };
            match during {
                Some(op) => Some(tokio::join!(self.send(0, op), kill).0),
                None => {
                    kill.await;
                    None
                }
            }
        });
        self.restart_nexus(during, answer)
    }

    /// Sends `op` and kills Nexus while a saga runs: the saga log is stalled for any saga
    /// that has `after_events` events recorded, and Nexus is killed as soon as one waits
    /// there (or once `op` is answered, if it started no saga that got that far); then as
    /// [`Harness::kill_nexus`].
    fn kill_nexus_mid_saga(&mut self, op: &Op, after_events: u32) -> Result<String, String> {
        let system = self.system();
        let stall = system.stall_saga_log(after_events);
        let answered = AtomicBool::new(false);
        let answer = self.runtime.block_on(async {
            let send = async {
                let answer = self.send(0, op).await;
                answered.store(true, Ordering::Relaxed);
                answer
            };
            let kill = async {
                let deadline = Instant::now() + Duration::from_secs(10);
                while !answered.load(Ordering::Relaxed)
                    && !system.a_saga_is_stalled()
                    && Instant::now() < deadline
                {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                system.kill_nexus();
                drop(stall);
            };
            tokio::join!(send, kill).0
        });
        self.restart_nexus(Some(op), Some(answer))
    }

    /// After Nexus was killed (with `during`'s answer, if it was sent): starts a new Nexus,
    /// checks that it resumed every unfinished saga, and that what it shows is allowed.
    fn restart_nexus(
        &mut self,
        during: Option<&Op>,
        answer: Option<Result<Outcome, String>>,
    ) -> Result<String, String> {
        let system = self.system();
        // Nothing writes the saga log between the kill and the start.
        let unfinished = system.unfinished_sagas().len();
        KILLS.fetch_add(1, Ordering::Relaxed);
        if unfinished > 0 {
            KILLS_MID_SAGA.fetch_add(1, Ordering::Relaxed);
        }
        self.runtime.block_on(system.start_nexus())?;
        self.resumed_every_unfinished_saga()?;
        // The old connections died with the old Nexus: new clients, so that no request goes
        // out on one of them.
        self.clients = (0..3)
            .map(|_| crate::authn_support::http_client(&self.system().token))
            .collect();
        let answered = match (during, answer) {
            (Some(op), Some(answer)) => {
                let outcome = answer.ok();
                self.check_answer(op, outcome)?;
                outcome.map_or("no answer; ".to_string(), |outcome| format!("{outcome}; "))
            }
            _ => {
                self.observe_unchanged()?;
                String::new()
            }
        };
        let state = during.map(|op| self.state_of(op)).unwrap_or_default();
        Ok(format!(
            "{answered}unfinished sagas at the kill: {unfinished}; a new Nexus started{state}"
        ))
    }

    /// A Nexus that has started runs every saga the log has unfinished: each is in its
    /// executor (read after the log, so a saga it began since is there too).
    fn resumed_every_unfinished_saga(&self) -> Result<(), String> {
        let system = self.system();
        let unfinished = system.unfinished_sagas();
        let running = self.runtime.block_on(system.sagas_in_memory())?;
        let abandoned: Vec<&String> = unfinished
            .iter()
            .filter(|saga| !running.iter().any(|id| saga.starts_with(id.as_str())))
            .collect();
        if abandoned.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "the new Nexus did not resume these unfinished sagas (id|name): {abandoned:?}"
            ))
        }
    }

    /// Stops the database, sends `during` (if any), which must be refused 503 and change
    /// nothing, and starts the database again after `down_ms`.
    fn stop_database(&mut self, during: Option<&Op>, down_ms: u64) -> Result<String, String> {
        self.system.as_mut().unwrap().stop_database();
        let answer = during.map(|op| self.runtime.block_on(self.send(0, op)));
        self.runtime
            .block_on(async { tokio::time::sleep(Duration::from_millis(down_ms)).await });
        self.system.as_mut().unwrap().start_database();
        let line = match answer {
            None => String::new(),
            Some(Ok(outcome @ Outcome::Refused(503, "ServiceNotAvailable"))) => {
                format!("{outcome}; ")
            }
            Some(other) => {
                return Err(format!(
                    "\"{}\" answered {other:?} while the database was down; the model \
                     allows only 503 ServiceNotAvailable (and no effect)",
                    during.unwrap()
                ));
            }
        };
        // Back: Nexus's pool replaces its dead connections as it checks them out.
        let serving = self.runtime.block_on(async {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let listed = self.clients[0]
                    .get(format!("{}/v1/projects", self.base))
                    .send()
                    .await;
                if listed.is_ok_and(|r| r.status().is_success()) {
                    return Ok(());
                }
                if Instant::now() > deadline {
                    return Err("Nexus did not serve again within 10 s of the database's return");
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        serving?;
        self.observe_unchanged()?;
        Ok(format!("{line}the database is back"))
    }

    /// Sends `op` through a proxy that drops Nexus's reply; the model allows it applied or
    /// not until the observation after it.
    fn lose_reply(&mut self, op: &Op) -> Result<String, String> {
        let (answer, dropped) = self.runtime.block_on(async {
            let proxy = LostReplyProxy::start(self.system().external).await;
            let base = format!("http://{}", proxy.address);
            let answer = self.send_via(&base, 0, op).await;
            (answer, proxy.dropped_answer().await)
        });
        let outcome = answer.ok();
        self.check_answer(op, outcome)?;
        let dropped = dropped.unwrap_or_else(|| "nothing".to_string());
        Ok(format!(
            "Nexus answered \"{}\", the client saw {}{}",
            dropped.trim(),
            match outcome {
                Some(outcome) => outcome.to_string(),
                None => "no answer".to_string(),
            },
            self.state_of(op)
        ))
    }

    /// For the story: the state the instance `op` names was seen in afterwards.
    fn state_of(&self, op: &Op) -> String {
        let (Op::Create { project, name, .. }
        | Op::Start { project, name }
        | Op::Stop { project, name }
        | Op::Reboot { project, name }
        | Op::Migrate { project, name, .. }
        | Op::Delete { project, name }) = op
        else {
            return String::new();
        };
        match self.model.instance(project, name) {
            Some(instance) => format!("; {project}/{name} {instance}"),
            None => String::new(),
        }
    }

    /// Sends one operation (as client `client`) and returns its answer, or why none came. A
    /// refusal must carry an error code and a message.
    async fn send(&self, client: usize, op: &Op) -> Result<Outcome, String> {
        self.send_via(&self.base, client, op).await
    }

    /// [`Harness::send`] to Nexus at `base` (or a proxy in front of it); a request through
    /// a proxy asks for the connection to close after the answer.
    async fn send_via(&self, base: &str, client: usize, op: &Op) -> Result<Outcome, String> {
        let http = &self.clients[client % self.clients.len()];
        let (method, path, body) = match op {
            Op::ProjectCreate { project } => (
                "POST",
                "/v1/projects".to_string(),
                Some(json!({"name": project, "description": ""})),
            ),
            Op::ProjectDelete { project } => ("DELETE", format!("/v1/projects/{project}"), None),
            Op::Create {
                project,
                name,
                ncpus,
                memory_gib,
                start,
            } => (
                "POST",
                format!("/v1/instances?project={project}"),
                Some(json!({
                    "name": name, "description": "", "hostname": name, "ncpus": ncpus,
                    "memory": u64::from(*memory_gib) << 30, "start": start,
                })),
            ),
            Op::Start { project, name } => (
                "POST",
                format!("/v1/instances/{name}/start?project={project}"),
                None,
            ),
            Op::Stop { project, name } => (
                "POST",
                format!("/v1/instances/{name}/stop?project={project}"),
                None,
            ),
            Op::Reboot { project, name } => (
                "POST",
                format!("/v1/instances/{name}/reboot?project={project}"),
                None,
            ),
            Op::Migrate { project, name, to } => (
                "POST",
                format!("/v1/instances/{name}/migrate?project={project}"),
                Some(match to {
                    Some(sled) => json!({"dst_sled_id": self.sled_ids[*sled]}),
                    None => json!({}),
                }),
            ),
            Op::Delete { project, name } => (
                "DELETE",
                format!("/v1/instances/{name}?project={project}"),
                None,
            ),
            Op::ExpungeSled { sled } => {
                return Ok(self.expunge(*sled).await);
            }
        };
        let mut request = http.request(method.parse().unwrap(), format!("{base}{path}"));
        if base != self.base {
            request = request.header(reqwest::header::CONNECTION, "close");
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request
            .send()
            .await
            .map_err(|e| format!("{op}: no answer: {e}"))?;
        let status = response.status().as_u16();
        let body = response
            .bytes()
            .await
            .map_err(|e| format!("{op}: {status} with no whole answer: {e}"))?;
        let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        if (200..300).contains(&status) {
            return Ok(Outcome::Ok);
        }
        assert!(
            body["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{op} -> {status} without a message: {body}"
        );
        let code = body["error_code"].as_str().unwrap_or("");
        // The model's codes are `'static`; a code no table knows (a bug) is kept as well.
        const CODES: [&str; 8] = [
            "ObjectNotFound",
            "ObjectAlreadyExists",
            "InvalidRequest",
            "InvalidValue",
            "Conflict",
            "InsufficientCapacity",
            "ServiceNotAvailable",
            "Internal",
        ];
        let known = CODES.iter().find(|c| **c == code);
        Ok(Outcome::Refused(
            status,
            known
                .copied()
                .unwrap_or_else(|| Box::leak(code.to_string().into_boxed_str())),
        ))
    }

    /// Stops the sled agent of sled `sled` (if it still runs) and takes it out of the
    /// context's list (so the invariant checker no longer asks it).
    fn close_sled(&mut self, sled: usize) {
        let id = self.sled_ids[sled];
        let system = self.system.as_mut().unwrap();
        self.runtime.block_on(system.close_sled(id));
    }

    /// The operator's expunge of a sled (its sled agent already closed, as the sled-expunge
    /// tests do): Nexus's internal `POST /sleds/{id}/expunge`.
    async fn expunge(&self, sled: usize) -> Outcome {
        let id = self.sled_ids[sled];
        let response = crate::context::operator_http(halyard_tls::NEXUS_NAME)
            .post(format!(
                "https://{}/sleds/{id}/expunge",
                self.system().internal
            ))
            .send()
            .await
            .expect("Nexus answers");
        if response.status().is_success() {
            Outcome::Ok
        } else {
            Outcome::Refused(response.status().as_u16(), "")
        }
    }

    /// Reads what the system shows now and checks it against the allowed next states: the
    /// external API's instances and run states, and the database's view of which sled holds
    /// each instance's VMMs. The model becomes what was seen (as far as it is allowed).
    fn observe_against(&mut self, allowed: &[Model], quiet: bool) -> Result<(), String> {
        let api = self.runtime.block_on(self.api_run_states());
        let seen = self.database_view();
        let mut reasons = Vec::new();
        for next in allowed {
            match check_observation(next, &api, &seen, quiet) {
                Ok(model) => {
                    self.model = model;
                    return Ok(());
                }
                Err(reason) => reasons.push(reason),
            }
        }
        Err(format!(
            "what the system shows is not what the model allows:\n{}",
            reasons.join("\nor:\n")
        ))
    }

    /// Each project's instances and their `run_state`, from the external API.
    async fn api_run_states(&self) -> BTreeMap<String, BTreeMap<String, String>> {
        let http = &self.clients[0];
        let get = |path: String| async move {
            http.get(format!("{}{path}", self.base))
                .send()
                .await
                .expect("Nexus answers")
                .json::<Value>()
                .await
                .expect("a JSON page")
        };
        let mut projects = BTreeMap::new();
        let listed = get("/v1/projects?limit=100".to_string()).await;
        for project in listed["items"].as_array().expect("projects") {
            let name = project["name"].as_str().unwrap().to_string();
            let instances = get(format!("/v1/instances?project={name}&limit=100")).await;
            let states = instances["items"]
                .as_array()
                .expect("instances")
                .iter()
                .map(|i| {
                    (
                        i["name"].as_str().unwrap().to_string(),
                        i["run_state"].as_str().unwrap().to_string(),
                    )
                })
                .collect();
            projects.insert(name, states);
        }
        projects
    }

    /// Every live instance as the database shows it (one statement, so one moment): its
    /// derived state and the sleds of its active and target VMMs.
    fn database_view(&self) -> BTreeMap<(String, String), InstanceModel> {
        let rows = self.system().sql(
            "SELECT p.name, i.name, i.nexus_state, i.active_propolis_id IS NOT NULL, \
                    coalesce(av.state, ''), coalesce(av.sled_id::text, ''), \
                    coalesce(tv.sled_id::text, ''), i.ncpus, i.memory / 1073741824 \
             FROM instance i JOIN project p ON p.id = i.project_id \
             LEFT JOIN vmm av ON av.id = i.active_propolis_id \
             LEFT JOIN vmm tv ON tv.id = i.target_propolis_id \
             WHERE i.time_deleted IS NULL",
        );
        let sled_index = |id: &str| {
            (!id.is_empty()).then(|| {
                self.sled_ids
                    .iter()
                    .position(|s| s.to_string() == id)
                    .expect("a known sled")
            })
        };
        rows.lines()
            .filter(|l| !l.is_empty())
            .map(|row| {
                let f: Vec<&str> = row.split('|').collect();
                let nexus_state: InstanceNexusState = f[2].parse().expect("a nexus state");
                let vmm_state = match (f[4], f[3] == "t") {
                    ("", true) => Some(VmmState::Starting), // claimed, no VMM record yet
                    ("", false) => None,
                    (state, _) => Some(state.parse::<VmmState>().expect("a VMM state")),
                };
                let state = InstanceState::derive(nexus_state, vmm_state).to_string();
                (
                    (f[0].to_string(), f[1].to_string()),
                    InstanceModel {
                        ncpus: f[7].parse().unwrap(),
                        memory_gib: f[8].parse().unwrap(),
                        state: RunState::from_label(&state).expect("a run state"),
                        active_sled: sled_index(f[5]),
                        target_sled: sled_index(f[6]),
                        fault: false,
                    },
                )
            })
            .collect()
    }
}

/// Whether `api` (run states) and `seen` (the database) are allowed from `next`; if so, the
/// model as seen.
fn check_observation(
    next: &Model,
    api: &BTreeMap<String, BTreeMap<String, String>>,
    seen: &BTreeMap<(String, String), InstanceModel>,
    quiet: bool,
) -> Result<Model, String> {
    let api_projects: Vec<&String> = api.keys().collect();
    let model_projects: Vec<&String> = next.projects.keys().collect();
    if api_projects != model_projects {
        return Err(format!(
            "projects {api_projects:?}, the model has {model_projects:?}"
        ));
    }
    let mut model = next.clone();
    for (project, instances) in &next.projects {
        let api_names: Vec<&String> = api[project].keys().collect();
        let names: Vec<&String> = instances.keys().collect();
        if api_names != names {
            return Err(format!(
                "project {project} lists instances {api_names:?}, the model has {names:?}"
            ));
        }
        for (name, instance) in instances {
            let shown = &api[project][name];
            let reachable = instance.reachable();
            if !reachable.iter().any(|s| s.state.label() == shown) {
                return Err(format!(
                    "{project}/{name} shows {shown} through the API; from {instance} the \
                     model allows {}",
                    states_of(&reachable)
                ));
            }
            let Some(db) = seen.get(&(project.clone(), name.clone())) else {
                return Err(format!("{project}/{name} is not in the database"));
            };
            if !instance.allows(db) {
                return Err(format!(
                    "{project}/{name} is {db} in the database; from {instance} the model \
                     allows {}",
                    states_of(&reachable)
                ));
            }
            if quiet && !db.is_settled() {
                return Err(format!(
                    "{project}/{name} is {db} at a quiet point (not settled)"
                ));
            }
            // A fault injected into a VMM may strike as long as that VMM may be the
            // instance's (an armed migration fault waits for the next migration).
            let fault = instance.fault && db.active_sled.is_some();
            model.projects.get_mut(project).unwrap().insert(
                name.clone(),
                InstanceModel {
                    fault,
                    ..db.clone()
                },
            );
        }
    }
    if seen.len() != next.projects.values().map(|p| p.len()).sum::<usize>() {
        return Err(format!("the database has {} live instances", seen.len()));
    }
    Ok(model)
}

fn states_of(states: &std::collections::BTreeSet<InstanceModel>) -> String {
    let states: Vec<String> = states.iter().map(ToString::to_string).collect();
    format!("[{}]", states.join(", "))
}

fn describe(model: &Model) -> String {
    let mut lines = Vec::new();
    for (project, instances) in &model.projects {
        for (name, instance) in instances {
            lines.push(format!(
                "  {project}/{name} ({} vCPUs, {} GiB): {instance}{}",
                instance.ncpus,
                instance.memory_gib,
                if instance.fault { " (faulted)" } else { "" }
            ));
        }
    }
    if !model.expunged.is_empty() {
        lines.push(format!("  expunged sleds: {:?}", model.expunged));
    }
    lines.push(format!(
        "  held per sled (threads, GiB): {:?}",
        model.held()
    ));
    lines.join("\n")
}

/// The model states after operations issued at once answered `outcomes`: for each order of
/// the operations, the states reached by applying them in that order with those answers.
fn interleavings(model: &Model, ops: &[Op], outcomes: &[Outcome]) -> Vec<Model> {
    let mut found: Vec<Model> = Vec::new();
    let mut order: Vec<usize> = (0..ops.len()).collect();
    permutations(&mut order, 0, &mut |order| {
        let mut states = vec![model.clone()];
        for &i in order {
            let mut next = Vec::new();
            for state in &states {
                for allowed in state.apply_concurrent(&ops[i], model) {
                    if allowed.outcome == outcomes[i] && !next.contains(&allowed.next) {
                        next.push(allowed.next);
                    }
                }
            }
            states = next;
        }
        for state in states {
            if !found.contains(&state) {
                found.push(state);
            }
        }
    });
    found
}

fn permutations(items: &mut Vec<usize>, k: usize, visit: &mut impl FnMut(&[usize])) {
    if k == items.len() {
        visit(items);
        return;
    }
    for i in k..items.len() {
        items.swap(k, i);
        permutations(items, k + 1, visit);
        items.swap(k, i);
    }
}

impl StateMachineTest for Harness {
    type SystemUnderTest = Harness;
    type Reference = Steps;

    fn init_test(setup: &Setup) -> Harness {
        Harness::new(setup)
    }

    fn apply(mut harness: Harness, _: &Setup, step: Step) -> Harness {
        harness.step(step);
        harness
    }

    fn teardown(mut harness: Harness, _: Setup) {
        // Every case ends at a quiet point, so what is still in flight is checked too.
        harness.step(Step::WaitQuiet);
        if std::env::var_os("HALYARD_MODEL_VERBOSE").is_some() {
            println!("case:\n{}\n", harness.story.join("\n"));
        }
    }
}

/// Runs one fixed story (a kept regression: a shrunk failure's steps) against the model.
fn run_story(delays_ms: [u64; 4], steps: Vec<Step>) {
    let setup = Setup {
        delays_ms,
        expunged: None,
    };
    Harness::test_sequential(Config::default(), setup, steps, None);
}

/// Story operations on instance `name` of project `p0` (which every case creates first).
fn p0_create(name: &str, ncpus: u32, memory_gib: u32, start: bool) -> Op {
    Op::Create {
        project: "p0".to_string(),
        name: name.to_string(),
        ncpus,
        memory_gib,
        start,
    }
}

fn create_started(name: &str) -> Op {
    p0_create(name, 2, 1, true)
}

fn p0_start(name: &str) -> Op {
    Op::Start {
        project: "p0".to_string(),
        name: name.to_string(),
    }
}

fn p0_stop(name: &str) -> Op {
    Op::Stop {
        project: "p0".to_string(),
        name: name.to_string(),
    }
}

fn p0_migrate(name: &str, to: Option<usize>) -> Op {
    Op::Migrate {
        project: "p0".to_string(),
        name: name.to_string(),
        to,
    }
}

fn p0_delete(name: &str) -> Op {
    Op::Delete {
        project: "p0".to_string(),
        name: name.to_string(),
    }
}

/// The story the deliberately broken build (a VMM that ended `destroyed` kept its
/// reservation) was shrunk to, kept: a stopped instance and a migrated one give back their
/// room, and the model checks each sled's totals at the quiet point.
#[test]
fn model_story_stop_and_migration_give_back_their_room() {
    run_story(
        [5, 5, 5, 1],
        vec![
            Step::Op(create_started("a")),
            Step::WaitQuiet,
            Step::Op(p0_migrate("a", None)),
            Step::WaitQuiet,
            Step::Op(p0_stop("a")),
        ],
    );
}

/// A model gap the long run found (seed 5218, shrunk to these steps): a migration to a named
/// sled that is expunged is refused 409 `Conflict` (its state), which the model took for a
/// refusal for room (507).
#[test]
fn model_story_a_migration_to_an_expunged_sled_is_a_conflict() {
    run_story(
        [5, 5, 5, 1],
        vec![
            Step::Op(Op::ExpungeSled { sled: 1 }),
            Step::Op(create_started("c")),
            Step::WaitQuiet,
            Step::Op(p0_migrate("c", Some(1))),
        ],
    );
}

/// Found by the long run (seed 1616, case 63): two deletes of one stopped instance sent at
/// once both answered success (each found the instance before the other destroyed it; the
/// destroy step takes "already destroyed" as done). The model allows that for deletes issued
/// together (`Model::apply_concurrent`); one after the other, the second is 404.
#[test]
fn model_story_two_deletes_at_once_may_both_succeed() {
    run_story(
        [5, 5, 5, 1],
        vec![
            Step::Op(p0_create("a", 6, 4, false)),
            Step::Together(vec![p0_delete("a"), p0_delete("a")]),
            Step::WaitQuiet,
            Step::Op(p0_delete("a")),
        ],
    );
}

/// Found by the long run (seed 1617, shrunk to this one step): Nexus killed 5 ms into a
/// create that also starts left the instance created and stopped. Creating with `start` is
/// the create saga, then the start saga; a crash between them leaves the first done and the
/// second never begun, and the client (no answer) cannot tell. The model allows that for an
/// unanswered create-and-start (`Model::unanswered`).
#[test]
fn model_story_nexus_killed_between_create_and_start() {
    run_story(
        [36, 85, 9, 28],
        vec![
            Step::Fault(Fault::KillNexus {
                during: Some(create_started("a")),
                after_ms: 5,
            }),
            Step::WaitQuiet,
            Step::Op(p0_start("a")),
        ],
    );
}

/// Nexus killed while it handles requests (a start, then a migration, then between steps):
/// each time a new Nexus resumes the sagas, the sled agents report to it, and every instance
/// settles where the model allows.
#[test]
fn model_story_nexus_killed_mid_request_and_restarted() {
    let kill =
        |during: Option<Op>, after_ms: u64| Step::Fault(Fault::KillNexus { during, after_ms });
    run_story(
        [40, 40, 40, 20],
        vec![
            Step::Op(create_started("b")),
            Step::Op(p0_create("a", 2, 1, false)),
            kill(Some(p0_start("a")), 5),
            Step::WaitQuiet,
            kill(Some(p0_migrate("b", None)), 20),
            kill(None, 0),
            Step::WaitQuiet,
            Step::Op(p0_stop("a")),
        ],
    );
}

/// Nexus killed in the sagas of a create-and-start, a migration, a delete and a start, each
/// just before it logs its next event: every time the new Nexus resumes the unfinished saga,
/// which finishes, and the instances end where the model allows.
#[test]
fn model_story_nexus_killed_mid_saga_resumes_it() {
    let kill = |op: Op, after_events: u32| {
        Step::Fault(Fault::KillNexusMidSaga {
            aim: Aim::At(op),
            after_events,
        })
    };
    run_story(
        [20, 20, 20, 5],
        vec![
            Step::Op(create_started("b")),
            kill(create_started("a"), 2),
            Step::WaitQuiet,
            kill(p0_migrate("b", None), 4),
            Step::WaitQuiet,
            kill(p0_delete("b"), 1),
            Step::WaitQuiet,
            kill(p0_start("a"), 6),
            Step::WaitQuiet,
        ],
    );
}

/// The database stops while an instance starts and another migrates: a request meanwhile is
/// refused 503 and changes nothing; after it starts again, the sagas and the sled agents'
/// reports go through and everything settles.
#[test]
fn model_story_the_database_stops_and_starts_again() {
    let stop_database = |during: Op, down_ms: u64| {
        Step::Fault(Fault::StopDatabase {
            during: Some(during),
            down_ms,
        })
    };
    run_story(
        [60, 60, 60, 30],
        vec![
            Step::Op(create_started("b")),
            Step::WaitQuiet,
            Step::Op(create_started("a")),
            Step::Op(p0_migrate("b", None)),
            stop_database(p0_stop("a"), 500),
            Step::WaitQuiet,
            stop_database(create_started("c"), 50),
            Step::Op(p0_stop("a")),
        ],
    );
}

/// Users' requests whose replies are lost (a create that starts, a stop, a delete): each
/// reached Nexus and was handled, and what is observed next shows it applied.
#[test]
fn model_story_lost_replies_on_users_requests() {
    let lose_reply = |op: Op| Step::Fault(Fault::LoseReply { op });
    run_story(
        [5, 5, 5, 1],
        vec![
            lose_reply(create_started("a")),
            Step::WaitQuiet,
            lose_reply(p0_stop("a")),
            Step::WaitQuiet,
            lose_reply(p0_delete("a")),
            Step::WaitQuiet,
        ],
    );
}

/// The story a deliberately broken build (a VMM report applied without its generation
/// check) was shrunk to, kept: a report of a running VMM from a generation ago (`starting`)
/// arrives late; Nexus must ignore it, so the instance still shows running.
#[test]
fn model_story_a_stale_report_changes_nothing() {
    run_story(
        [5, 5, 5, 1],
        vec![
            Step::Op(create_started("c")),
            Step::Fault(Fault::StaleReport {
                project: "p0".to_string(),
                name: "c".to_string(),
            }),
            Step::WaitQuiet,
        ],
    );
}

/// Whether this story fails (in any of `tries` runs; timing decides some failures), and
/// how.
fn fails(setup: &Setup, steps: &[Step], tries: u32) -> Option<String> {
    for _ in 0..tries {
        let run = std::panic::catch_unwind(AssertUnwindSafe(|| {
            Harness::test_sequential(Config::default(), setup.clone(), steps.to_vec(), None)
        }));
        if let Err(panic) = run {
            return Some(
                panic
                    .downcast_ref::<String>()
                    .cloned()
                    .unwrap_or_else(|| "a panic".to_string()),
            );
        }
    }
    None
}

/// After proptest's shrinking (one pass of deletions, then simpler values): steps deleted
/// one at a time, pass after pass, while the story still fails, so the story printed has no
/// step it does not need (within `HALYARD_MODEL_SHRINK_SECS`, 300 s by default).
fn minimise(
    setup: &Setup,
    mut steps: Vec<Step>,
    mut reason: String,
    tries: u32,
) -> (Vec<Step>, String) {
    let budget = Duration::from_secs(env_number("HALYARD_MODEL_SHRINK_SECS").unwrap_or(300));
    let started = Instant::now();
    loop {
        let mut deleted_any = false;
        for ix in (0..steps.len()).rev() {
            if started.elapsed() > budget {
                return (steps, reason);
            }
            let mut shorter = steps.clone();
            shorter.remove(ix);
            if let Some(failure) = fails(setup, &shorter, tries) {
                steps = shorter;
                reason = failure;
                deleted_any = true;
            }
        }
        if !deleted_any {
            return (steps, reason);
        }
    }
}

fn env_number<T: std::str::FromStr>(name: &str) -> Option<T> {
    std::env::var(name).ok().map(|v| {
        v.parse()
            .unwrap_or_else(|_| panic!("{name} is a number, not {v:?}"))
    })
}

/// What a run of the model test has done so far (each run of a case counts, shrinking's too).
#[derive(Default)]
struct Tally {
    runs: usize,
    steps: usize,
    /// Faults injected, by kind.
    faults: BTreeMap<&'static str, usize>,
}

impl Tally {
    fn count(&mut self, steps: &[Step]) {
        self.runs += 1;
        self.steps += steps.len();
        for step in steps {
            if let Step::Fault(fault) = step {
                *self.faults.entry(fault.kind()).or_default() += 1;
            }
        }
    }

    fn line(&self, started: Instant) -> String {
        let faults: Vec<String> = FAULT_KINDS
            .iter()
            .map(|kind| format!("{} {kind}", self.faults.get(kind).unwrap_or(&0)))
            .collect();
        format!(
            "{} runs of a case, {} steps (faults: {}; of {} Nexus kills {} found a saga \
             unfinished), in {:.0?}",
            self.runs,
            self.steps,
            faults.join(", "),
            KILLS.load(Ordering::Relaxed),
            KILLS_MID_SAGA.load(Ordering::Relaxed),
            started.elapsed()
        )
    }
}

#[test]
fn the_real_system_follows_the_reference_model() {
    let cases = env_number("HALYARD_MODEL_CASES").unwrap_or(DEFAULT_CASES);
    let seed = env_number("HALYARD_MODEL_SEED").unwrap_or(DEFAULT_SEED);
    let started = Instant::now();
    let config = Config {
        cases,
        rng_seed: RngSeed::Fixed(seed),
        failure_persistence: None,
        // Each case starts a fresh system; a shrink replays a whole case.
        max_shrink_iters: env_number("HALYARD_MODEL_SHRINK_ITERS").unwrap_or(300),
        ..Config::default()
    };
    let mut runner = TestRunner::new(config.clone());
    let tally = std::sync::Arc::new(std::sync::Mutex::new(Tally::default()));
    let counter = tally.clone();
    let failed = AtomicBool::new(false);
    let shrink_tries = env_number("HALYARD_MODEL_SHRINK_TRIES").unwrap_or(2);
    let result = runner.run(
        &Steps::sequential_strategy(1..MAX_STEPS),
        move |(initial, steps, seen)| {
            // Timing and random placement decide whether some failures show: once a case has
            // failed, a shorter candidate counts as failing if it fails in any of a few runs,
            // so the shrinking is not misled by one lucky run.
            let tries = if failed.load(Ordering::Relaxed) {
                shrink_tries
            } else {
                1
            };
            for _ in 0..tries {
                let mut tally = counter.lock().unwrap();
                tally.count(&steps);
                if tally.runs % 10 == 0 {
                    println!("model test: so far {}", tally.line(started));
                }
                drop(tally);
                let run = std::panic::catch_unwind(AssertUnwindSafe(|| {
                    Harness::test_sequential(
                        config.clone(),
                        initial.clone(),
                        steps.clone(),
                        seen.clone(),
                    )
                }));
                if let Err(panic) = run {
                    failed.store(true, Ordering::Relaxed);
                    std::panic::resume_unwind(panic);
                }
            }
            Ok(())
        },
    );
    let replay = format!(
        "HALYARD_MODEL_SEED={seed} HALYARD_MODEL_CASES={cases} cargo test -j2 -p halyard-nexus \
         --test nexus model_test:: -- --nocapture"
    );
    match result {
        Ok(()) => println!(
            "model test: seed {seed}: {cases} cases, all allowed by the model: {}",
            tally.lock().unwrap().line(started)
        ),
        Err(TestError::Fail(reason, (setup, steps, _))) => {
            let (steps, reason) = minimise(&setup, steps, reason.to_string(), shrink_tries);
            let story: Vec<String> = steps
                .iter()
                .enumerate()
                .map(|(i, s)| format!("{:>3}. {s:?}", i + 2))
                .collect();
            panic!(
                "model test: seed {seed} failed; shrunk to {} steps (after creating p0), \
                 sleds {setup:?}:\n{}\n\n{reason}\n\nreplay: {replay}",
                steps.len(),
                story.join("\n")
            );
        }
        Err(TestError::Abort(reason)) => panic!("model test aborted: {reason}\nreplay: {replay}"),
    }
}

/// Found by the model test (seed 5218: "p0/b shows stopping through the API; from migrating on
/// sled 1 → sled 0 the model allows [running on sled 0, migrating on sled 0, migrating on
/// sled 1 → sled 0]"): a view read the instance row (active VMM: the source), then the
/// source's VMM row after the migration's completion had retired it as `destroyed`, and so
/// showed a migrating instance as `stopping`. Views taken without pause while an instance
/// migrates back and forth must never show it anything but running or migrating.
#[test]
fn a_view_during_migrations_never_shows_the_instance_stopping() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let ctx = TestContext::with_sim(
            2,
            SimConfig {
                start_delay_ms: 5,
                stop_delay_ms: 5,
                reboot_delay_ms: 5,
                migration_phase_delay_ms: 1,
            },
        )
        .await;
        let project = ctx.project("p").await;
        let id = ctx.instance(&project, "vm", 2).await;
        ctx.nexus().instance_start(id).await.unwrap();
        ctx.wait_for(id, InstanceState::Running).await;
        let done = std::sync::Arc::new(AtomicBool::new(false));
        let mut viewers = tokio::task::JoinSet::new();
        for _ in 0..4 {
            let (nexus, done) = (ctx.nexus().clone(), done.clone());
            viewers.spawn(async move {
                let mut seen = BTreeMap::<String, usize>::new();
                while !done.load(Ordering::Relaxed) {
                    let state = nexus.instance_view(id).await.unwrap().run_state();
                    *seen.entry(state.to_string()).or_default() += 1;
                }
                seen
            });
        }
        for _ in 0..20 {
            ctx.nexus().instance_migrate(id, None).await.unwrap();
            ctx.eventually("the migration to end", async |ctx: &TestContext| {
                let view = ctx.view(id).await;
                view.instance.runtime.migration().is_none()
                    && view.run_state() == InstanceState::Running
            })
            .await;
        }
        done.store(true, Ordering::Relaxed);
        let mut seen = BTreeMap::<String, usize>::new();
        for counts in viewers.join_all().await {
            for (state, n) in counts {
                *seen.entry(state).or_default() += n;
            }
        }
        println!("views during 20 migrations: {seen:?}");
        assert!(
            seen.keys().all(|s| s == "running" || s == "migrating"),
            "a migrating instance was shown in another state: {seen:?}"
        );
        ctx.assert_quiet_and_consistent().await;
    });
}
