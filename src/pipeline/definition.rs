//! Pipeline definitions as stored: creating a pipeline or a new version of it, reading one at
//! a version (validated definitions are cached, as versions never change), listing, deleting.

use std::sync::Arc;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::dag::{self, Dag, Definition, Dependency, StageDef};
use super::{PipelineError, PipelineService, invalid};
use crate::audit::chain::now_ts;
use crate::audit::{Action, Actor, NewEvent, Outcome};
use crate::limits;
use crate::store::Tx;
use crate::store::pipeline::{self as sql, PipelineRow, VersionRow};

/// A pipeline definition at one version.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct Pipeline {
    pub id: String,
    pub name: String,
    /// The version shown here.
    pub version: i64,
    /// The newest version (runs start from it unless told otherwise).
    pub latest_version: i64,
    pub description: String,
    pub stages: Vec<StageDef>,
    pub dependencies: Vec<Dependency>,
    /// Stage names in the order runs start them.
    pub order: Vec<String>,
    pub created_at: String,
    /// When this version was created, and by whom.
    pub version_created_at: String,
    pub version_created_by: String,
    /// Set when the pipeline was deleted (its versions and runs are kept).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deleted_at: Option<String>,
    /// Runs of this pipeline running now.
    pub active_runs: i64,
}

/// One line of `pipeline_list`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct PipelineSummary {
    pub id: String,
    pub name: String,
    pub latest_version: i64,
    pub description: String,
    pub stage_count: usize,
    pub updated_at: String,
}

/// A new pipeline, or a new version of one.
#[derive(Debug, Clone)]
pub struct NewPipeline {
    pub name: String,
    pub description: String,
    pub definition: Definition,
    /// Adds a version to this pipeline instead of creating one.
    pub pipeline_id: Option<String>,
}

/// `version` of pipeline `p`, its latest by default: one that exists.
pub(super) fn version_of(p: &PipelineRow, version: Option<i64>) -> Result<i64, PipelineError> {
    let version = version.unwrap_or(p.latest_version);
    if version < 1 || version > p.latest_version {
        return Err(invalid(
            "version",
            format!(
                "pipeline {} has versions 1 to {}, not {version}",
                p.id, p.latest_version
            ),
        ));
    }
    Ok(version)
}

impl PipelineService {
    /// Creates a pipeline, or (with `pipeline_id`) a new version of one. An identical
    /// definition and description adds no version: the current one is returned (`created`
    /// false).
    pub fn create(&self, new: NewPipeline, by: &Actor) -> Result<(Pipeline, bool), PipelineError> {
        let name = new.name.trim().to_string();
        if name.is_empty()
            || name.len() > 100
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return Err(invalid(
                "name",
                format!("expected 1 to 100 letters, digits, '-', '_' or '.', got {name:?}"),
            ));
        }
        if new.description.chars().count() > limits::SUMMARY_CHARS {
            return Err(invalid(
                "description",
                format!("at most {} characters", limits::SUMMARY_CHARS),
            ));
        }
        let dag = dag::validate(new.definition)?;
        let definition =
            serde_json::to_string(&dag.definition).map_err(|e| invalid("stages", e.to_string()))?;
        let at = now_ts();
        let (id, created) = self.store().write(|tx| -> Result<_, PipelineError> {
            let existing = match &new.pipeline_id {
                Some(id) => {
                    let p = sql::get_pipeline(tx, id)?.ok_or_else(|| PipelineError::NotFound {
                        what: "pipeline",
                        id: id.clone(),
                    })?;
                    if p.deleted_at.is_some() {
                        return Err(PipelineError::Conflict(format!(
                            "pipeline {id} was deleted; create a new one instead"
                        )));
                    }
                    if p.name != name {
                        return Err(invalid(
                            "name",
                            format!(
                                "pipeline {id} is named {:?}; a new version keeps the name",
                                p.name
                            ),
                        ));
                    }
                    Some(p)
                }
                None => {
                    if let Some(p) = sql::pipeline_by_name(tx, &name)? {
                        return Err(PipelineError::Conflict(format!(
                            "a pipeline named {name:?} already exists ({}, version {}); pass pipeline_id {} to create a new version of it, or choose another name",
                            p.id, p.latest_version, p.id
                        )));
                    }
                    None
                }
            };
            let (id, version) = match existing {
                Some(p) => {
                    let latest = sql::get_version(tx, &p.id, p.latest_version)?;
                    if let Some(v) = latest
                        && v.definition == definition
                        && v.description == new.description
                    {
                        return Ok((p.id, false));
                    }
                    sql::set_latest_version(tx, &p.id, p.latest_version + 1, &at)?;
                    (p.id, p.latest_version + 1)
                }
                None => {
                    let id = format!("pip_{}", uuid::Uuid::new_v4().simple());
                    sql::insert_pipeline(
                        tx,
                        &PipelineRow {
                            id: id.clone(),
                            name: name.clone(),
                            latest_version: 1,
                            created_at: at.clone(),
                            updated_at: at.clone(),
                            created_by: by.render(),
                            deleted_at: None,
                        },
                    )?;
                    (id, 1)
                }
            };
            sql::insert_version(
                tx,
                &VersionRow {
                    pipeline_id: id.clone(),
                    version,
                    description: new.description.clone(),
                    definition: definition.clone(),
                    created_at: at.clone(),
                    created_by: by.render(),
                },
            )?;
            self.append(
                tx,
                NewEvent {
                    actor: by.clone(),
                    action: Action::PipelineCreated,
                    subject: id.clone(),
                    outcome: Outcome::Ok,
                    detail: json!({"name": name, "version": version,
                                   "stages": dag.definition.stages.len()}),
                    critical: false,
                },
            )?;
            Ok((id, true))
        })?;
        Ok((self.get(&id, None)?, created))
    }

    pub(super) fn pipeline_row(
        &self,
        tx: &Tx<'_>,
        id_or_name: &str,
    ) -> Result<PipelineRow, PipelineError> {
        let found = match sql::get_pipeline(tx, id_or_name)? {
            Some(p) => Some(p),
            None => sql::pipeline_by_name(tx, id_or_name)?,
        };
        found.ok_or_else(|| PipelineError::NotFound {
            what: "pipeline",
            id: id_or_name.to_string(),
        })
    }

    /// A validated definition, from the cache or the database.
    pub(super) fn dag(
        &self,
        tx: &Tx<'_>,
        pipeline_id: &str,
        version: i64,
    ) -> Result<(Arc<Dag>, VersionRow), PipelineError> {
        let v =
            sql::get_version(tx, pipeline_id, version)?.ok_or_else(|| PipelineError::NotFound {
                what: "pipeline version",
                id: format!("{pipeline_id} v{version}"),
            })?;
        let key = (pipeline_id.to_string(), version);
        if let Some(d) = self
            .inner
            .dags
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
        {
            return Ok((d.clone(), v));
        }
        let def: Definition = serde_json::from_str(&v.definition).map_err(|e| {
            PipelineError::Conflict(format!(
                "stored definition of {pipeline_id} v{version} is unreadable: {e}"
            ))
        })?;
        let dag = Arc::new(dag::validate(def)?);
        self.inner
            .dags
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, dag.clone());
        Ok((dag, v))
    }

    /// A pipeline by id or name, at `version` (default: the latest).
    pub fn get(&self, id_or_name: &str, version: Option<i64>) -> Result<Pipeline, PipelineError> {
        self.store().read(|tx| self.get_in(tx, id_or_name, version))
    }

    fn get_in(
        &self,
        tx: &Tx<'_>,
        id_or_name: &str,
        version: Option<i64>,
    ) -> Result<Pipeline, PipelineError> {
        let p = self.pipeline_row(tx, id_or_name)?;
        let version = version_of(&p, version)?;
        let (dag, v) = self.dag(tx, &p.id, version)?;
        let active_runs = sql::active_runs(tx, &p.id)?;
        Ok(Pipeline {
            order: dag
                .order
                .iter()
                .map(|&i| dag.definition.stages[i].name.clone())
                .collect(),
            stages: dag.definition.stages.clone(),
            dependencies: dag.definition.dependencies.clone(),
            id: p.id,
            name: p.name,
            version,
            latest_version: p.latest_version,
            description: v.description,
            created_at: p.created_at,
            version_created_at: v.created_at,
            version_created_by: v.created_by,
            deleted_at: p.deleted_at,
            active_runs,
        })
    }

    /// Live pipelines by name; `cursor` (a name) continues a page.
    pub fn list(
        &self,
        limit: u32,
        cursor: Option<&str>,
    ) -> Result<(Vec<PipelineSummary>, Option<String>), PipelineError> {
        self.store().read(|tx| self.list_in(tx, limit, cursor))
    }

    fn list_in(
        &self,
        tx: &Tx<'_>,
        limit: u32,
        cursor: Option<&str>,
    ) -> Result<(Vec<PipelineSummary>, Option<String>), PipelineError> {
        let mut rows = sql::list_pipelines(tx, cursor, i64::from(limit) + 1)?;
        let next = if rows.len() > limit as usize {
            rows.truncate(limit as usize);
            rows.last().map(|p| p.name.clone())
        } else {
            None
        };
        let mut out = Vec::with_capacity(rows.len());
        for p in rows {
            let (dag, v) = self.dag(tx, &p.id, p.latest_version)?;
            out.push(PipelineSummary {
                stage_count: dag.definition.stages.len(),
                description: v.description,
                id: p.id,
                name: p.name,
                latest_version: p.latest_version,
                updated_at: p.updated_at,
            });
        }
        Ok((out, next))
    }

    /// Deletes a pipeline (refused while one of its runs is running). Versions and runs stay
    /// readable; the name becomes free.
    pub fn delete(&self, id_or_name: &str, by: &Actor) -> Result<Pipeline, PipelineError> {
        let shown = self.get(id_or_name, None)?;
        let at = now_ts();
        self.store().write(|tx| -> Result<(), PipelineError> {
            let p = self.pipeline_row(tx, &shown.id)?;
            if p.deleted_at.is_some() {
                return Err(PipelineError::Conflict(format!(
                    "pipeline {} was already deleted at {}",
                    p.id,
                    p.deleted_at.unwrap_or_default()
                )));
            }
            let active = sql::active_runs(tx, &p.id)?;
            if active > 0 {
                return Err(PipelineError::Conflict(format!(
                    "pipeline {} has {active} run(s) still running; cancel them with pipeline_run_cancel or wait for them to finish",
                    p.id
                )));
            }
            sql::mark_deleted(tx, &p.id, &at)?;
            self.append(
                tx,
                NewEvent {
                    actor: by.clone(),
                    action: Action::PipelineDeleted,
                    subject: p.id.clone(),
                    outcome: Outcome::Ok,
                    detail: json!({"name": p.name, "versions": p.latest_version}),
                    critical: false,
                },
            )?;
            Ok(())
        })?;
        self.get(&shown.id, None)
    }
}
