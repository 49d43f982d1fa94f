//! Pipeline definitions: stages and dependencies as callers write them, their validation
//! (unique names, known stages, no cycles, with errors that name the stage or the cycle), the
//! topological order runs follow, and the built-in templates.

use std::collections::{BTreeMap, HashMap};
use std::str::FromStr;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::agent::normalize_capabilities;
use crate::approval::Risk;
use crate::limits;
use crate::macros::string_enum;

/// The most stages one pipeline may have.
pub const MAX_STAGES: usize = 1000;

/// One stage of a pipeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StageDef {
    /// Unique within the pipeline: letters, digits, `-`, `_` and `.`, at most 64 characters.
    pub name: String,
    /// What kind of work this is (for example `ingestion`, `transformation`, `analysis`).
    /// Recorded and shown; it is also the task kind unless `kind` says otherwise.
    #[serde(rename = "type", default = "default_type")]
    pub stage_type: String,
    /// The task kind the agent runs (the tool or command name). Defaults to `type`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Whether the run fails when this stage fails. A failed optional stage is recorded and
    /// the stages after it still run. Default true.
    #[serde(default = "yes")]
    pub required: bool,
    /// The capability an agent needs to run this stage. Defaults to `type`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capability: Option<String>,
    /// How long one attempt may take before its lease expires and it is retried, in seconds.
    /// Defaults to the queue's default (`[tasks] default_timeout_seconds`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = limits::TASK_TIMEOUT_SECONDS.min, max = limits::TASK_TIMEOUT_SECONDS.max))]
    pub timeout_seconds: Option<f64>,
    /// Retries after a failed or timed-out attempt. Defaults to the queue's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = limits::TASK_MAX_RETRIES.min, max = limits::TASK_MAX_RETRIES.max))]
    pub retries: Option<u32>,
    /// True makes this stage a human gate: instead of a task it asks a person through the
    /// approval service, and only its own branch waits for the answer.
    #[serde(default, skip_serializing_if = "is_false")]
    pub approval: bool,
    /// Risk shown to the person deciding an approval stage. Default medium.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub risk: Option<Risk>,
    /// Fixed parameters passed to the stage's task alongside the run input.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub params: Option<Value>,
}

fn default_type() -> String {
    "task".into()
}
fn yes() -> bool {
    true
}
fn is_false(b: &bool) -> bool {
    !*b
}

/// `from` must complete before `to` starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Dependency {
    /// The stage that runs first (its name).
    pub from: String,
    /// The stage that waits for it (its name).
    pub to: String,
}

/// A pipeline's stages and the order between them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Definition {
    pub stages: Vec<StageDef>,
    #[serde(default)]
    pub dependencies: Vec<Dependency>,
}

string_enum!(
    /// Built-in pipeline definitions `pipeline_create` can start from.
    Template {
        /// The six-stage data pipeline: ingestion -> transformation -> analysis -> validation
        /// -> processing -> output, every stage required, run by agents with the
        /// `data-processing` capability.
        SixStage => "six_stage",
    }
);

impl Template {
    pub fn all() -> [Template; 1] {
        [Template::SixStage]
    }

    pub fn description(self) -> &'static str {
        match self {
            Template::SixStage => {
                "6-stage data processing pipeline: ingestion, transformation, analysis, validation, processing, output"
            }
        }
    }

    pub fn definition(self) -> Definition {
        match self {
            Template::SixStage => {
                let stages = [
                    ("ingestion", 300.0),
                    ("transformation", 600.0),
                    ("analysis", 900.0),
                    ("validation", 300.0),
                    ("processing", 1200.0),
                    ("output", 300.0),
                ];
                Definition {
                    stages: stages
                        .iter()
                        .map(|(name, timeout)| StageDef {
                            name: (*name).into(),
                            stage_type: (*name).into(),
                            kind: None,
                            required: true,
                            capability: Some("data-processing".into()),
                            timeout_seconds: Some(*timeout),
                            retries: Some(3),
                            approval: false,
                            risk: None,
                            params: None,
                        })
                        .collect(),
                    dependencies: stages
                        .windows(2)
                        .map(|w| Dependency {
                            from: w[0].0.into(),
                            to: w[1].0.into(),
                        })
                        .collect(),
                }
            }
        }
    }
}

/// A definition that is wrong, with the field (as a path) and what was expected.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct Invalid {
    pub field: String,
    pub message: String,
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> Invalid {
    Invalid {
        field: field.into(),
        message: message.into(),
    }
}

/// A validated definition with its topological order and each stage's dependencies.
#[derive(Debug, Clone)]
pub struct Dag {
    pub definition: Definition,
    /// Stage indexes in the order runs start them (dependencies first; declaration order
    /// among stages that are ready together).
    pub order: Vec<usize>,
    /// For each stage, the indexes of the stages it depends on.
    pub upstream: Vec<Vec<usize>>,
}

impl Dag {
    pub fn index(&self, name: &str) -> Option<usize> {
        self.definition.stages.iter().position(|s| s.name == name)
    }
}

/// Validates a definition (and normalizes capabilities). Errors name the offending field.
pub fn validate(mut def: Definition) -> Result<Dag, Invalid> {
    if def.stages.is_empty() {
        return Err(invalid("stages", "a pipeline needs at least one stage"));
    }
    if def.stages.len() > MAX_STAGES {
        return Err(invalid(
            "stages",
            format!("at most {MAX_STAGES} stages, got {}", def.stages.len()),
        ));
    }
    let mut index: HashMap<String, usize> = HashMap::new();
    for (i, stage) in def.stages.iter_mut().enumerate() {
        check_stage(i, stage, &mut index)?;
    }
    let (mut upstream, downstream) = link(&def, &index)?;
    for dep in &mut def.dependencies {
        dep.from = dep.from.trim().to_string();
        dep.to = dep.to.trim().to_string();
    }
    let order = topological_order(&def, &upstream, &downstream)?;
    for list in &mut upstream {
        list.sort_unstable();
    }
    Ok(Dag {
        definition: def,
        order,
        upstream,
    })
}

/// Checks stage `i` (and normalizes its name, type and capability), recording its name in
/// `index`.
fn check_stage(
    i: usize,
    stage: &mut StageDef,
    index: &mut HashMap<String, usize>,
) -> Result<(), Invalid> {
    let at = |f: &str| format!("stages[{i}].{f}");
    stage.name = stage.name.trim().to_string();
    let ok = !stage.name.is_empty()
        && stage.name.len() <= 64
        && stage
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !ok {
        return Err(invalid(
            at("name"),
            format!(
                "expected 1 to 64 letters, digits, '-', '_' or '.', got {:?}",
                stage.name
            ),
        ));
    }
    if let Some(first) = index.insert(stage.name.clone(), i) {
        return Err(invalid(
            at("name"),
            format!(
                "stage name {:?} is already used by stages[{first}]; stage names must be unique",
                stage.name
            ),
        ));
    }
    stage.stage_type = stage.stage_type.trim().to_string();
    if stage.stage_type.is_empty() {
        return Err(invalid(at("type"), "must not be empty"));
    }
    if let Some(kind) = &stage.kind
        && kind.trim().is_empty()
    {
        return Err(invalid(at("kind"), "must not be empty when given"));
    }
    if let Some(t) = stage.timeout_seconds
        && !limits::TASK_TIMEOUT_SECONDS.contains(t)
    {
        return Err(invalid(
            at("timeout_seconds"),
            format!("{}, got {t}", limits::TASK_TIMEOUT_SECONDS.expected()),
        ));
    }
    if let Some(r) = stage.retries
        && !limits::TASK_MAX_RETRIES.contains(r)
    {
        return Err(invalid(
            at("retries"),
            format!("{}, got {r}", limits::TASK_MAX_RETRIES.expected()),
        ));
    }
    if stage.approval {
        if stage.kind.is_some() || stage.capability.is_some() || stage.retries.is_some() {
            return Err(invalid(
                at("approval"),
                "an approval stage asks a person and runs no task: leave out kind, capability and retries",
            ));
        }
    } else {
        if stage.risk.is_some() {
            return Err(invalid(
                at("risk"),
                "risk applies only to approval stages (approval: true)",
            ));
        }
        let cap = stage
            .capability
            .clone()
            .unwrap_or_else(|| stage.stage_type.clone());
        let caps =
            normalize_capabilities(&[cap]).map_err(|e| invalid(at("capability"), e.to_string()))?;
        stage.capability = caps.into_iter().next();
    }
    Ok(())
}

/// For each stage, the indexes of other stages (those it depends on, or those depending on it).
type Edges = Vec<Vec<usize>>;

/// Each stage's upstream and downstream stages, from the dependencies, whose names must be
/// known, distinct and listed once.
fn link(def: &Definition, index: &HashMap<String, usize>) -> Result<(Edges, Edges), Invalid> {
    let n = def.stages.len();
    let mut upstream: Vec<Vec<usize>> = vec![Vec::new(); n];
    let mut downstream: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (i, dep) in def.dependencies.iter().enumerate() {
        let find = |field: &str, name: &str| {
            index.get(name.trim()).copied().ok_or_else(|| {
                invalid(
                    format!("dependencies[{i}].{field}"),
                    format!(
                        "no stage is named {name:?}; expected one of: {}",
                        def.stages
                            .iter()
                            .map(|s| s.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                )
            })
        };
        let from = find("from", &dep.from)?;
        let to = find("to", &dep.to)?;
        if from == to {
            return Err(invalid(
                format!("dependencies[{i}]"),
                format!("stage {:?} cannot depend on itself", dep.from),
            ));
        }
        if upstream[to].contains(&from) {
            return Err(invalid(
                format!("dependencies[{i}]"),
                format!("{} -> {} is listed twice", dep.from, dep.to),
            ));
        }
        upstream[to].push(from);
        downstream[from].push(to);
    }
    Ok((upstream, downstream))
}

/// The order runs start the stages in, or the cycle that leaves none.
fn topological_order(
    def: &Definition,
    upstream: &[Vec<usize>],
    downstream: &[Vec<usize>],
) -> Result<Vec<usize>, Invalid> {
    let n = def.stages.len();
    // Kahn's algorithm, always taking the earliest-declared ready stage.
    let mut missing: Vec<usize> = upstream.iter().map(Vec::len).collect();
    let mut ready: std::collections::BTreeSet<usize> =
        (0..n).filter(|&i| missing[i] == 0).collect();
    let mut order = Vec::with_capacity(n);
    while let Some(&next) = ready.iter().next() {
        ready.remove(&next);
        order.push(next);
        for &d in &downstream[next] {
            missing[d] -= 1;
            if missing[d] == 0 {
                ready.insert(d);
            }
        }
    }
    if order.len() < n {
        let cycle = find_cycle(downstream, &missing);
        let names: Vec<&str> = cycle.iter().map(|&i| def.stages[i].name.as_str()).collect();
        return Err(invalid(
            "dependencies",
            format!("the dependencies form a cycle: {}", names.join(" -> ")),
        ));
    }
    Ok(order)
}

/// One cycle among the stages Kahn's algorithm could not order, as a closed path
/// (`a -> b -> a`).
fn find_cycle(downstream: &[Vec<usize>], missing: &[usize]) -> Vec<usize> {
    let stuck: Vec<bool> = missing.iter().map(|&m| m > 0).collect();
    // Walk stuck edges from a stuck stage until a stage repeats: every stuck stage has a
    // stuck predecessor, so walking backwards would also work; forwards needs a stuck
    // successor, which a stage on a cycle always has.
    let Some(start) =
        (0..stuck.len()).find(|&i| stuck[i] && downstream[i].iter().any(|&d| stuck[d]))
    else {
        return Vec::new();
    };
    let mut seen: BTreeMap<usize, usize> = BTreeMap::new();
    let mut path = vec![start];
    let mut at = start;
    seen.insert(start, 0);
    loop {
        let Some(&next) = downstream[at].iter().find(|&&d| stuck[d]) else {
            return path;
        };
        if let Some(&pos) = seen.get(&next) {
            let mut cycle = path[pos..].to_vec();
            cycle.push(next);
            return cycle;
        }
        seen.insert(next, path.len());
        path.push(next);
        at = next;
    }
}

impl StageDef {
    /// The task kind agents see for this stage.
    pub fn task_kind(&self) -> &str {
        self.kind.as_deref().unwrap_or(&self.stage_type)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use serde_json::json;

    fn def(v: Value) -> Definition {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn diamond_orders_dependencies_first() {
        let dag = validate(def(json!({
            "stages": [{"name": "d"}, {"name": "b"}, {"name": "c"}, {"name": "a"}],
            "dependencies": [
                {"from": "a", "to": "b"}, {"from": "a", "to": "c"},
                {"from": "b", "to": "d"}, {"from": "c", "to": "d"}
            ]
        })))
        .unwrap();
        let names: Vec<&str> = dag
            .order
            .iter()
            .map(|&i| dag.definition.stages[i].name.as_str())
            .collect();
        assert_eq!(names, ["a", "b", "c", "d"]);
        assert_eq!(dag.upstream[0], vec![1, 2]);
    }

    #[test]
    fn cycle_is_named() {
        let err = validate(def(json!({
            "stages": [{"name": "start"}, {"name": "x"}, {"name": "y"}, {"name": "z"}],
            "dependencies": [
                {"from": "start", "to": "x"}, {"from": "x", "to": "y"},
                {"from": "y", "to": "z"}, {"from": "z", "to": "x"}
            ]
        })))
        .unwrap_err();
        assert_eq!(err.field, "dependencies");
        assert!(err.message.contains("x -> y -> z -> x"), "{}", err.message);
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (json!({"stages": []}), "stages"),
            (
                json!({"stages": [{"name": "a"}, {"name": "a"}]}),
                "stages[1].name",
            ),
            (json!({"stages": [{"name": "a b"}]}), "stages[0].name"),
            (
                json!({"stages": [{"name": "a"}], "dependencies": [{"from": "a", "to": "nope"}]}),
                "dependencies[0].to",
            ),
            (
                json!({"stages": [{"name": "a"}], "dependencies": [{"from": "a", "to": "a"}]}),
                "dependencies[0]",
            ),
            (
                json!({"stages": [{"name": "a", "timeout_seconds": 0}]}),
                "stages[0].timeout_seconds",
            ),
            (
                json!({"stages": [{"name": "a", "approval": true, "capability": "x"}]}),
                "stages[0].approval",
            ),
            (
                json!({"stages": [{"name": "a", "risk": "high"}]}),
                "stages[0].risk",
            ),
        ];
        for (input, field) in cases {
            let err = validate(def(input.clone())).unwrap_err();
            assert_eq!(err.field, field, "{input}: {err}");
        }
    }

    #[test]
    fn template_is_a_valid_chain() {
        let dag = validate(Template::SixStage.definition()).unwrap();
        assert_eq!(dag.order, vec![0, 1, 2, 3, 4, 5]);
        assert_eq!(
            dag.definition.stages[0].capability.as_deref(),
            Some("data-processing")
        );
    }
}
