//! Sagas from the saga log: the list, and one saga's DAG with the state of each node.
//!
//! The DAG is what steno serialized into `saga.dag` (a `steno::SagaDag`); the state of each
//! node comes from its events in `saga_node_event` (`node_id` is the node's index in the
//! DAG). steno's public API gives the named nodes (index, name, label) and a Graphviz
//! rendering; the edges and the start and end nodes are read from the same serialized
//! graph (petgraph's serde form), since steno does not expose them.

use super::store::Db;
use crate::output::{indent, print_fields, print_json, print_rows, time};
use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use halyard_common::ids::{GenericUuid, NexusUuid, SagaUuid};
use halyard_common::{Error, Labelled};
use halyard_db_model::{Saga, SagaNodeEvent, SagaState};
use serde::Serialize;
use std::collections::BTreeMap;
use steno::SagaDag;
use tabled::Tabled;

/// What a node is, beyond the named ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NodeKind {
    Start,
    End,
    Named,
    /// Structure steno adds (e.g. a subsaga's start).
    Other,
}

#[derive(Debug, Clone)]
struct GraphNode {
    index: usize,
    kind: NodeKind,
    /// The node's name (`(start)`, `(end)` for those).
    name: String,
    /// The action's label (empty for start and end).
    label: String,
}

/// A saga's DAG: its nodes by index, and its edges.
#[derive(Debug)]
struct SagaGraph {
    dag: SagaDag,
    nodes: BTreeMap<usize, GraphNode>,
    edges: Vec<(usize, usize)>,
}

impl SagaGraph {
    fn load(saga: &Saga) -> anyhow::Result<SagaGraph> {
        let dag: SagaDag = serde_json::from_value(saga.dag.clone()).with_context(|| {
            format!(
                "saga {} has a DAG this build of omdb cannot read",
                saga.id()
            )
        })?;
        let mut nodes = BTreeMap::new();
        for node in dag.get_nodes() {
            let index = node.index().index();
            nodes.insert(
                index,
                GraphNode {
                    index,
                    kind: NodeKind::Named,
                    name: node.name().as_ref().to_string(),
                    label: node.label(),
                },
            );
        }
        let raw = &saga.dag;
        let index_of = |v: &serde_json::Value| v.as_u64().and_then(|i| usize::try_from(i).ok());
        let start = index_of(&raw["start_node"]);
        let end = index_of(&raw["end_node"]);
        let raw_nodes = raw["graph"]["nodes"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        for (index, raw_node) in raw_nodes.iter().enumerate() {
            if nodes.contains_key(&index) {
                continue;
            }
            let (kind, name) = if Some(index) == start {
                (NodeKind::Start, "(start)".to_string())
            } else if Some(index) == end {
                (NodeKind::End, "(end)".to_string())
            } else {
                // An externally tagged enum: {"SubsagaStart": {...}} or "End".
                let tag = match raw_node {
                    serde_json::Value::Object(map) => map.keys().next().cloned(),
                    serde_json::Value::String(s) => Some(s.clone()),
                    _ => None,
                };
                (
                    NodeKind::Other,
                    format!("({})", tag.unwrap_or_else(|| "node".to_string())),
                )
            };
            nodes.insert(
                index,
                GraphNode {
                    index,
                    kind,
                    name,
                    label: String::new(),
                },
            );
        }
        let edges = raw["graph"]["edges"]
            .as_array()
            .map(|edges| {
                edges
                    .iter()
                    .filter_map(|edge| {
                        let edge = edge.as_array()?;
                        Some((index_of(edge.first()?)?, index_of(edge.get(1)?)?))
                    })
                    .filter(|(a, b)| nodes.contains_key(a) && nodes.contains_key(b))
                    .collect()
            })
            .unwrap_or_default();
        Ok(SagaGraph { dag, nodes, edges })
    }

    fn name_of(&self, index: usize) -> String {
        self.nodes
            .get(&index)
            .map_or_else(|| format!("(node {index})"), |n| n.name.clone())
    }

    /// The nodes in layers: each node one layer below the deepest node it depends on, so
    /// nodes in one layer may run in parallel. Without usable edges, one node per layer:
    /// start, then the others by index, then end.
    fn layers(&self) -> Vec<Vec<usize>> {
        let indices: Vec<usize> = self.nodes.keys().copied().collect();
        let mut depth: BTreeMap<usize, usize> = BTreeMap::new();
        let mut incoming: BTreeMap<usize, usize> = indices.iter().map(|&i| (i, 0)).collect();
        for (_, b) in &self.edges {
            *incoming.entry(*b).or_default() += 1;
        }
        let mut ready: Vec<usize> = incoming
            .iter()
            .filter(|(_, n)| **n == 0)
            .map(|(i, _)| *i)
            .collect();
        for &i in &ready {
            depth.insert(i, 0);
        }
        let mut seen = 0;
        while let Some(node) = ready.pop() {
            seen += 1;
            let d = depth[&node];
            for (_, b) in self.edges.iter().filter(|(a, _)| *a == node) {
                let entry = depth.entry(*b).or_insert(0);
                *entry = (*entry).max(d + 1);
                let left = incoming.get_mut(b).expect("every edge's node is known");
                *left -= 1;
                if *left == 0 {
                    ready.push(*b);
                }
            }
        }
        if self.edges.is_empty() || seen != indices.len() {
            let rank = |n: &GraphNode| match n.kind {
                NodeKind::Start => 0,
                NodeKind::End => 2,
                _ => 1,
            };
            let mut order: Vec<&GraphNode> = self.nodes.values().collect();
            order.sort_by_key(|n| (rank(n), n.index));
            return order.into_iter().map(|n| vec![n.index]).collect();
        }
        let mut layers: Vec<Vec<usize>> = Vec::new();
        for (node, d) in depth {
            if layers.len() <= d {
                layers.resize(d + 1, Vec::new());
            }
            layers[d].push(node);
        }
        layers
    }
}

/// Where a node is, from its events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
enum NodeState {
    NotStarted,
    /// Its action started and has not finished.
    Running,
    Done,
    Failed,
    /// Its undo started and has not finished.
    Undoing,
    Undone,
    /// Its undo failed: the saga is stuck.
    UndoFailed,
}

impl NodeState {
    fn of(events: &[&SagaNodeEvent]) -> NodeState {
        let has = |t: &str| events.iter().any(|e| e.event_type == t);
        if has("undo_failed") {
            NodeState::UndoFailed
        } else if has("undo_finished") {
            NodeState::Undone
        } else if has("undo_started") {
            NodeState::Undoing
        } else if has("failed") {
            NodeState::Failed
        } else if has("succeeded") {
            NodeState::Done
        } else if has("started") {
            NodeState::Running
        } else {
            NodeState::NotStarted
        }
    }

    fn text(self) -> &'static str {
        match self {
            NodeState::NotStarted => "not started",
            NodeState::Running => "running",
            NodeState::Done => "done",
            NodeState::Failed => "failed",
            NodeState::Undoing => "undoing",
            NodeState::Undone => "undone",
            NodeState::UndoFailed => "UNDO FAILED (stuck)",
        }
    }

    fn in_progress(self) -> bool {
        matches!(self, NodeState::Running | NodeState::Undoing)
    }

    /// Fill colour in the Graphviz rendering.
    fn colour(self) -> &'static str {
        match self {
            NodeState::NotStarted => "white",
            NodeState::Running | NodeState::Undoing => "lightblue",
            NodeState::Done => "palegreen",
            NodeState::Failed => "salmon",
            NodeState::Undone => "lightgrey",
            NodeState::UndoFailed => "red",
        }
    }
}

/// A saga's events grouped by node, each node's in the order they were written.
fn events_by_node(events: &[SagaNodeEvent]) -> BTreeMap<usize, Vec<&SagaNodeEvent>> {
    let mut by_node: BTreeMap<usize, Vec<&SagaNodeEvent>> = BTreeMap::new();
    for event in events {
        if let Ok(node) = usize::try_from(event.node_id) {
            by_node.entry(node).or_default().push(event);
        }
    }
    by_node
}

/// How a saga ended, from its log: `stuck` (an undo failed), `unwound` (an action failed and
/// it undid what it had done), `succeeded`; `-` while it runs.
fn outcome(saga: &Saga, events: &[SagaNodeEvent]) -> &'static str {
    let has = |t: &str| events.iter().any(|e| e.event_type == t);
    if has("undo_failed") {
        "STUCK"
    } else if saga.saga_state.0 != SagaState::Done && saga.resume_failure.is_some() {
        "UNRESUMABLE"
    } else if saga.saga_state.0 != SagaState::Done {
        "-"
    } else if has("failed") {
        "unwound"
    } else {
        "succeeded"
    }
}

/// The node in progress: of the nodes whose action (or undo) started and did not finish,
/// the one that started last; `-` if none.
fn current_node(graph: Option<&SagaGraph>, events: &[SagaNodeEvent]) -> String {
    let by_node = events_by_node(events);
    let mut current: Option<(DateTime<Utc>, usize, NodeState)> = None;
    for (node, node_events) in &by_node {
        let state = NodeState::of(node_events);
        if !state.in_progress() {
            continue;
        }
        let began = node_events
            .iter()
            .filter(|e| e.event_type == "started" || e.event_type == "undo_started")
            .map(|e| e.event_time)
            .max()
            .unwrap_or_default();
        if current.is_none_or(|(t, _, _)| began >= t) {
            current = Some((began, *node, state));
        }
    }
    match current {
        None => "-".to_string(),
        Some((_, node, state)) => {
            let name = graph.map_or_else(|| format!("(node {node})"), |g| g.name_of(node));
            match state {
                NodeState::Undoing => format!("{name} (undoing)"),
                _ => name,
            }
        }
    }
}

#[derive(Debug, Serialize, Tabled)]
#[tabled(rename_all = "SCREAMING_SNAKE_CASE")]
struct SagaRow {
    id: SagaUuid,
    name: String,
    /// The saga's cached state in the log: running, unwinding, done.
    state: &'static str,
    /// succeeded, unwound, STUCK, or `-` while it runs.
    outcome: &'static str,
    /// The Nexus that runs it (`current_sec`).
    owner: NexusUuid,
    /// Its adoption generation: 1, plus one per takeover (by another Nexus, or by a new
    /// process of its owner's id).
    #[tabled(rename = "GEN")]
    generation: u64,
    #[tabled(display = "time")]
    created: DateTime<Utc>,
    current_node: String,
}

pub(super) async fn cmd_sagas(db: &Db, all: bool, json: bool) -> anyhow::Result<()> {
    let mut sagas = db.datastore.saga_list(all).await.map_err(|e| db.err(e))?;
    if !all {
        // Stuck sagas are done (as far as the executor goes) but need a person: list them.
        let stuck = db
            .datastore
            .saga_list_stuck()
            .await
            .map_err(|e| db.err(e))?;
        sagas.extend(stuck);
        sagas.sort_by_key(|s| (s.time_created, s.id()));
        sagas.dedup_by_key(|s| s.id());
    }
    let ids: Vec<SagaUuid> = sagas.iter().map(Saga::id).collect();
    let events = db
        .datastore
        .saga_node_events_for(&ids)
        .await
        .map_err(|e| db.err(e))?;
    let mut events_of: BTreeMap<SagaUuid, Vec<SagaNodeEvent>> = BTreeMap::new();
    for event in events {
        events_of.entry(event.saga_id.0).or_default().push(event);
    }
    let rows: Vec<SagaRow> = sagas
        .iter()
        .map(|saga| {
            let events = events_of.remove(&saga.id()).unwrap_or_default();
            let graph = SagaGraph::load(saga).ok();
            SagaRow {
                id: saga.id(),
                name: saga.name.clone(),
                state: saga.saga_state.0.label(),
                outcome: outcome(saga, &events),
                owner: saga.current_sec.0,
                generation: saga.adopt_generation.0.as_u64(),
                created: saga.time_created,
                current_node: current_node(graph.as_ref(), &events),
            }
        })
        .collect();
    let empty = if all {
        "no sagas"
    } else {
        "no unfinished or stuck sagas (--all shows finished ones)"
    };
    print_rows(&rows, json, empty)
}

#[derive(Debug, Serialize)]
struct NodeReport {
    index: usize,
    name: String,
    label: String,
    state: NodeState,
    /// Its layer in the DAG (0 = the start node); nodes in one layer may run in parallel.
    layer: usize,
    events: Vec<EventReport>,
}

#[derive(Debug, Serialize)]
struct EventReport {
    event_type: String,
    time: DateTime<Utc>,
    data: Option<serde_json::Value>,
}

#[derive(Debug, Serialize)]
struct SagaReport {
    id: SagaUuid,
    name: String,
    state: &'static str,
    outcome: &'static str,
    owner: NexusUuid,
    creator: NexusUuid,
    created: DateTime<Utc>,
    /// The id of the external API request that started it (`x-request-id` of its response,
    /// `req_id` in Nexus's log), if one did.
    started_by_request: Option<String>,
    current_node: String,
    nodes: Vec<NodeReport>,
    edges: Vec<(usize, usize)>,
}

pub(super) async fn cmd_saga(db: &Db, which: &str, dot: bool, json: bool) -> anyhow::Result<()> {
    let id = parse_saga_id(which)?;
    let saga = fetch_saga(db, id).await?;
    let events = db
        .datastore
        .saga_node_events(id)
        .await
        .map_err(|e| db.err(e))?;
    let graph = SagaGraph::load(&saga)?;
    let by_node = events_by_node(&events);
    let state_of = |index: usize| {
        by_node
            .get(&index)
            .map_or(NodeState::NotStarted, |e| NodeState::of(e))
    };

    if dot {
        println!("{}", decorate_dot(&graph.dag.dot().to_string(), state_of));
        return Ok(());
    }

    let layers = graph.layers();
    let layer_of: BTreeMap<usize, usize> = layers
        .iter()
        .enumerate()
        .flat_map(|(layer, nodes)| nodes.iter().map(move |n| (*n, layer)))
        .collect();
    let report = SagaReport {
        id,
        name: saga.name.clone(),
        state: saga.saga_state.0.label(),
        outcome: outcome(&saga, &events),
        owner: saga.current_sec.0,
        creator: saga.creator.0,
        created: saga.time_created,
        started_by_request: halyard_observability::request_id::from_saga_dag(&saga.dag),
        current_node: current_node(Some(&graph), &events),
        nodes: graph
            .nodes
            .values()
            .map(|n| NodeReport {
                index: n.index,
                name: n.name.clone(),
                label: n.label.clone(),
                state: state_of(n.index),
                layer: layer_of.get(&n.index).copied().unwrap_or_default(),
                events: by_node
                    .get(&n.index)
                    .map(|events| {
                        events
                            .iter()
                            .map(|e| EventReport {
                                event_type: e.event_type.clone(),
                                time: e.event_time,
                                data: e.data.clone(),
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
            })
            .collect(),
        edges: graph.edges.clone(),
    };
    if json {
        return print_json(&report);
    }

    print_fields(&[
        ("name", report.name.clone()),
        ("state", report.state.to_string()),
        ("outcome", report.outcome.to_string()),
        ("current node", report.current_node.clone()),
        ("created", time(&report.created)),
        ("id", report.id.to_string()),
        ("owner", report.owner.to_string()),
        ("creator", report.creator.to_string()),
        (
            "started by request",
            report
                .started_by_request
                .clone()
                .unwrap_or_else(|| "- (by Nexus itself)".to_string()),
        ),
    ]);
    if let Some(stuck) = by_node
        .iter()
        .find(|(_, events)| NodeState::of(events) == NodeState::UndoFailed)
    {
        let (node, events) = stuck;
        let error = events
            .iter()
            .find(|e| e.event_type == "undo_failed")
            .and_then(|e| e.data.as_ref())
            .map_or_else(|| "no detail recorded".to_string(), summarize);
        println!();
        println!(
            "STUCK: undoing node {:?} failed ({error}). The saga will not finish by itself: \
             what it did is only partly undone, and needs a person.",
            graph.name_of(*node)
        );
    }
    println!();
    println!("DAG (node index, name, action: state):");
    let mut lines: Vec<[String; 5]> = Vec::new();
    let last_layer = layers.len().saturating_sub(1);
    for (layer_index, layer) in layers.iter().enumerate() {
        for (position, node) in layer.iter().enumerate() {
            let branch = match (layer.len(), position) {
                (1, _) if layer_index == 0 => "┌─",
                (1, _) if layer_index == last_layer => "└─",
                (1, _) => "├─",
                (_, 0) => "├┬",
                (n, p) if p + 1 == n => "│└",
                _ => "│├",
            };
            let n = &graph.nodes[node];
            let state = state_of(*node);
            let detail = by_node
                .get(node)
                .and_then(|events| {
                    let wanted = match state {
                        NodeState::Failed => "failed",
                        NodeState::UndoFailed => "undo_failed",
                        _ => return None,
                    };
                    events.iter().find(|e| e.event_type == wanted)
                })
                .and_then(|e| e.data.as_ref())
                .map(|data| format!(": {}", summarize(data)))
                .unwrap_or_default();
            lines.push([
                branch.to_string(),
                format!("[{}]", n.index),
                n.name.clone(),
                n.label.clone(),
                format!("{}{detail}", state.text()),
            ]);
        }
    }
    let widths: Vec<usize> = (1..4)
        .map(|c| {
            lines
                .iter()
                .map(|l| l[c].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut text = String::new();
    for line in &lines {
        let row = format!(
            "{} {:>w1$} {:<w2$}  {:<w3$}  {}",
            line[0],
            line[1],
            line[2],
            line[3],
            line[4],
            w1 = widths[0],
            w2 = widths[1],
            w3 = widths[2],
        );
        text.push_str(row.trim_end());
        text.push('\n');
    }
    println!("{}", indent(text.trim_end()));
    Ok(())
}

/// A recorded error (or output) on one short line.
fn summarize(data: &serde_json::Value) -> String {
    const MAX: usize = 160;
    let text = match data {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if text.chars().count() > MAX {
        let cut: String = text.chars().take(MAX).collect();
        format!("{cut}…")
    } else {
        text
    }
}

/// steno's Graphviz rendering with each node filled by its state (and the state as an
/// external label). Lines that are not node statements pass through unchanged.
fn decorate_dot(dot: &str, state_of: impl Fn(usize) -> NodeState) -> String {
    let mut out = Vec::new();
    for line in dot.lines() {
        let trimmed = line.trim_start();
        let node = trimmed
            .split_once(" [ ")
            .filter(|(_, rest)| rest.ends_with(" ]"))
            .and_then(|(index, _)| index.parse::<usize>().ok());
        match node {
            Some(index) => {
                let state = state_of(index);
                let without_end = line.trim_end().trim_end_matches(" ]");
                out.push(format!(
                    "{without_end}, style = filled, fillcolor = \"{}\", xlabel = \"{}\" ]",
                    state.colour(),
                    state.text()
                ));
            }
            None => out.push(line.to_string()),
        }
    }
    out.join("\n")
}
/// A saga id from the command line.
fn parse_saga_id(text: &str) -> anyhow::Result<SagaUuid> {
    text.trim()
        .parse::<uuid::Uuid>()
        .map(SagaUuid::from_untyped_uuid)
        .with_context(|| format!("{text:?} is not a saga id (a UUID)"))
}

/// A saga by id, or "no saga with id".
async fn fetch_saga(db: &Db, id: SagaUuid) -> anyhow::Result<Saga> {
    match db.datastore.saga_fetch(id).await {
        Ok(saga) => Ok(saga),
        Err(Error::ObjectNotFound { .. }) => bail!("no saga with id {id}"),
        Err(e) => Err(db.err(e)),
    }
}

#[derive(Debug, Serialize, Tabled)]
#[tabled(rename_all = "SCREAMING_SNAKE_CASE")]
struct NexusRow {
    id: NexusUuid,
    /// The latest process started with this id.
    incarnation: uuid::Uuid,
    #[tabled(display = "time")]
    started: DateTime<Utc>,
    #[tabled(display = "time")]
    last_heartbeat: DateTime<Utc>,
    /// How long ago that was, by the database's clock: a Nexus silent longer than the
    /// configured bound (`nexus_gone_after_ms`, 10 s unless set) has its sagas adopted.
    silent_for: String,
    /// The unfinished sagas it owns.
    sagas: usize,
    /// Of those, the ones it could not resume.
    unresumable: usize,
}

/// Every Nexus that has run against this database, most recently heard first.
pub(super) async fn cmd_nexus(db: &Db, json: bool) -> anyhow::Result<()> {
    let listed = db.datastore.nexus_list().await.map_err(|e| db.err(e))?;
    let unfinished = db.datastore.saga_list(false).await.map_err(|e| db.err(e))?;
    let rows: Vec<NexusRow> = listed
        .into_iter()
        .map(|(nexus, silent)| {
            let owned = unfinished
                .iter()
                .filter(|s| s.current_sec == nexus.id)
                .collect::<Vec<_>>();
            NexusRow {
                id: nexus.id.0,
                incarnation: nexus.incarnation,
                started: nexus.time_started,
                last_heartbeat: nexus.time_heartbeat,
                silent_for: format!("{:.1}s", silent.as_secs_f64()),
                sagas: owned.len(),
                unresumable: owned.iter().filter(|s| s.resume_failure.is_some()).count(),
            }
        })
        .collect();
    print_rows(&rows, json, "no Nexus has run against this database")
}
