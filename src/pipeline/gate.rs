//! The pipeline-stage executor's gate: what a person approves before an approval stage lets
//! the stages after it run. Built from the run and the stages before it, both when the stage
//! opens its approval and when the approval is consumed, so the two must agree exactly.

use std::collections::HashMap;

use serde_json::{Map, Value, json};

use super::StageStatus;
use super::dag::Dag;
use super::engine::StageState;
use crate::approval::{Executor, Gate, Risk};
use crate::store::pipeline::RunRow;

/// The outputs of the stages stage `i` depends on, and the errors of those that did not
/// complete.
pub(super) fn upstream(
    dag: &Dag,
    i: usize,
    state: &HashMap<String, StageState>,
) -> (Map<String, Value>, Map<String, Value>) {
    let mut outputs = Map::new();
    let mut errors = Map::new();
    for &u in &dag.upstream[i] {
        let name = &dag.definition.stages[u].name;
        if let Some((s, output, error)) = state.get(name) {
            let output = output
                .as_deref()
                .and_then(|o| serde_json::from_str(o).ok())
                .unwrap_or(Value::Null);
            outputs.insert(name.clone(), output);
            if *s != StageStatus::Completed {
                errors.insert(name.clone(), json!(error));
            }
        }
    }
    (outputs, errors)
}

/// The gate of approval stage `i` of `run`.
pub(super) fn stage_gate(
    run: &RunRow,
    dag: &Dag,
    i: usize,
    state: &HashMap<String, StageState>,
) -> Gate {
    let def = &dag.definition.stages[i];
    let (outputs, _) = upstream(dag, i, state);
    let input: Value = serde_json::from_str(&run.input).unwrap_or(Value::Null);
    let parameters: Value = serde_json::from_str(&run.parameters).unwrap_or(Value::Null);
    let preview = serde_json::to_string_pretty(&json!({
        "input": input, "parameters": parameters, "upstream_outputs": outputs,
    }))
    .ok();
    Gate {
        executor: Executor::PipelineStage,
        subject_id: format!("{}/{}", run.id, def.name),
        summary: format!(
            "Pipeline run {} has reached approval stage \"{}\" ({}). Approve to let the stages after it run; reject to stop this branch{}.",
            run.id,
            def.name,
            def.stage_type,
            if def.required {
                " and fail the run"
            } else {
                ""
            },
        ),
        action: json!({
            "pipeline_run": run.id, "pipeline_id": run.pipeline_id, "version": run.version,
            "stage": def.name, "upstream": outputs,
        }),
        risk: def.risk.unwrap_or(Risk::Medium),
        preview,
    }
}
