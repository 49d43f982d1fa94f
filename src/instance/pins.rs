//! Tool pinning: each child tool's definition is pinned per type on first sight; a changed
//! definition, or one with prompt-injection markers, is quarantined until a person approves it
//! (`instance_tool_review`); the type's policy then decides what is offered and how.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::oneshot;

use super::child::Tool;
use super::policy::{self, InjectionFlag, ToolAccess};
use super::{
    ChildTool, Cmd, HiddenTool, InstanceError, InstanceService, Live, PinStatus, ToolTable, merge,
};
use crate::audit::chain::now_ts;
use crate::audit::{Action, Actor, NewEvent, Outcome};
use crate::store::instance::{self as sql, PinRow};
use crate::store::{StoreError, Tx};

impl InstanceService {
    /// Pins each tool's definition (first sight), quarantines changed or flagged ones, applies
    /// the type's policy, and returns what is offered and what is hidden.
    pub(super) fn apply_pins(
        &self,
        live: &Live,
        tools: &[Tool],
    ) -> Result<ToolTable, InstanceError> {
        let quarantined_elsewhere = self.quarantined_elsewhere(live);
        let now = now_ts();
        let decided = self.inner.audit.store().write(|tx| {
            tools
                .iter()
                .map(|tool| {
                    let (verdict, flags) =
                        self.pin_one(tx, live, tool, &quarantined_elsewhere, &now)?;
                    Ok::<_, StoreError>((tool.clone(), verdict, flags))
                })
                .collect::<Result<Vec<_>, _>>()
        })?;
        Ok(offer(live, decided))
    }

    /// Tools another instance of `live`'s type hides for a pending change: that change stays
    /// pending when this one shows the approved definition.
    fn quarantined_elsewhere(&self, live: &Live) -> HashSet<String> {
        let type_name = &live.type_name;
        self.live_all()
            .iter()
            .filter(|l| l.type_name == *type_name && l.id != live.id)
            .filter_map(|l| l.conn())
            .flat_map(|c| {
                c.table
                    .hidden
                    .iter()
                    .filter(|h| h.reason == "quarantined")
                    .map(|h| h.tool.clone())
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// Pins one tool's definition, or quarantines it: the reason it is hidden (if it is), and
    /// its prompt-injection flags.
    fn pin_one(
        &self,
        tx: &Tx<'_>,
        live: &Live,
        tool: &Tool,
        quarantined_elsewhere: &HashSet<String>,
        now: &str,
    ) -> Result<(Option<String>, Vec<InjectionFlag>), StoreError> {
        let audit = &self.inner.audit;
        let type_name = &live.type_name;
        let now = now.to_string();
        let def = serde_json::to_value(tool).unwrap_or(Value::Null);
        let hash = policy::definition_hash(&def);
        let flags = tool_flags(tool);
        let flags_json = serde_json::to_string(&flags).unwrap_or_else(|_| "[]".into());
        let name = tool.name.to_string();
        let existing = sql::pin(tx, type_name, &name)?;
        let event = |action, detail: Value| NewEvent {
            actor: Actor::system(),
            action,
            subject: format!("{type_name}/{name}"),
            outcome: Outcome::Ok,
            detail: merge(
                json!({"type": type_name, "tool": name, "hash": hash, "instance": live.name}),
                detail,
            ),
            critical: false,
        };
        let quarantine = |reason: String| -> Option<String> { Some(reason) };
        let verdict = match existing {
            None if flags.is_empty() => {
                sql::put_pin(
                    tx,
                    &PinRow {
                        status: PinStatus::Pinned,
                        hash: Some(hash.clone()),
                        definition: Some(def.to_string()),
                        flags: flags_json,
                        ..first_sight(type_name, &name, &now)
                    },
                )?;
                audit.append_in(tx, &event(Action::InstanceToolPinned, json!({})))?;
                None
            }
            None => {
                sql::put_pin(
                    tx,
                    &PinRow {
                        status: PinStatus::Quarantined,
                        pending_hash: Some(hash.clone()),
                        pending_definition: Some(def.to_string()),
                        pending_flags: Some(flags_json),
                        ..first_sight(type_name, &name, &now)
                    },
                )?;
                audit.append_in(
                    tx,
                    &event(
                        Action::InstanceToolQuarantined,
                        json!({"reason": "flagged", "flags": flags}),
                    ),
                )?;
                quarantine(format!(
                    "its description has prompt-injection markers ({})",
                    flag_rules(&flags)
                ))
            }
            Some(p) if p.hash.as_deref() == Some(hash.as_str()) => {
                if p.status != PinStatus::Pinned && !quarantined_elsewhere.contains(&name) {
                    // The child went back to the approved definition, and no other
                    // instance shows the changed one.
                    let mut p = p;
                    p.status = PinStatus::Pinned;
                    p.pending_hash = None;
                    p.pending_definition = None;
                    p.pending_flags = None;
                    p.updated_at = now.clone();
                    sql::put_pin(tx, &p)?;
                }
                None
            }
            Some(mut p) => {
                let first_change = p.pending_hash.as_deref() != Some(hash.as_str());
                if first_change {
                    p.status = PinStatus::Quarantined;
                    p.pending_hash = Some(hash.clone());
                    p.pending_definition = Some(def.to_string());
                    p.pending_flags = Some(flags_json);
                    p.approval_id = None;
                    p.updated_at = now.clone();
                    sql::put_pin(tx, &p)?;
                    audit.append_in(
                        tx,
                        &event(
                            Action::InstanceToolQuarantined,
                            json!({"reason": "changed", "pinned_hash": p.hash, "flags": flags}),
                        ),
                    )?;
                }
                let what = describe_change(p.definition.as_deref(), &def);
                quarantine(if flags.is_empty() {
                    format!("its definition changed since it was pinned ({what})")
                } else {
                    format!(
                        "its definition changed since it was pinned ({what}) and has prompt-injection markers ({})",
                        flag_rules(&flags)
                    )
                })
            }
        };
        Ok((verdict, flags))
    }
}

/// The pin row of a tool seen for the first time, before its verdict: neither pinned nor
/// pending.
fn first_sight(type_name: &str, tool: &str, now: &str) -> PinRow {
    PinRow {
        type_name: type_name.to_string(),
        tool: tool.to_string(),
        status: PinStatus::Quarantined,
        hash: None,
        definition: None,
        flags: "[]".into(),
        pending_hash: None,
        pending_definition: None,
        pending_flags: None,
        approval_id: None,
        first_seen_at: now.to_string(),
        updated_at: now.to_string(),
    }
}

/// What is offered of the pinned tools, under which names, and what is hidden and why.
fn offer(live: &Live, mut decided: Vec<(Tool, Option<String>, Vec<InjectionFlag>)>) -> ToolTable {
    let type_name = &live.type_name;
    let mut table = ToolTable::default();
    // Tools whose names are offered unchanged claim them first; a shortened or sanitized
    // name that collides with one taken falls back to its hashed form.
    decided.sort_by_key(|(tool, _, _)| {
        policy::exposed_tool_part(&live.name, &tool.name) != tool.name.as_ref()
    });
    for (tool, quarantined, flags) in decided {
        let original = tool.name.to_string();
        if let Some(detail) = quarantined {
            table.hidden.push(HiddenTool {
                tool: original,
                reason: "quarantined".into(),
                detail,
                flags,
            });
            continue;
        }
        let ann = tool.annotations.clone();
        let read_only = ann.as_ref().and_then(|a| a.read_only_hint);
        let destructive = ann.as_ref().and_then(|a| a.destructive_hint);
        let access = live.ty.policy.access(&original, read_only, destructive);
        if access == ToolAccess::Denied {
            table.hidden.push(HiddenTool {
                tool: original,
                reason: "denied".into(),
                detail: format!("denied by the policy of type `{type_name}`"),
                flags,
            });
            continue;
        }
        let mut part = policy::exposed_tool_part(&live.name, &original);
        if table.by_part.contains_key(&part) {
            part = policy::hashed_tool_part(&live.name, &original);
        }
        if let Some(other) = table.by_part.get(&part) {
            table.hidden.push(HiddenTool {
                detail: format!(
                    "its exposed name {}{}{part} is taken by the child's tool `{}`",
                    live.name,
                    policy::SEPARATOR,
                    other.original
                ),
                tool: original,
                reason: "name_collision".into(),
                flags,
            });
            continue;
        }
        let exposed = format!("{}{}{part}", live.name, policy::SEPARATOR);
        let mut offered = tool.clone();
        offered.name = exposed.clone().into();
        let note = match access {
            ToolAccess::Approval => " Each call waits for a person's approval.",
            _ => "",
        };
        let desc = tool.description.as_deref().unwrap_or("");
        offered.description = Some(
            format!("[{} (type {type_name})]{note} {desc}", live.name)
                .trim_end()
                .to_string()
                .into(),
        );
        let child = Arc::new(ChildTool {
            original: original.clone(),
            exposed,
            tool: offered,
            access,
            read_only: read_only == Some(true),
            destructive,
        });
        table.by_part.insert(part, child.clone());
        table.by_original.insert(original, child);
    }
    table.hidden.sort_by(|a, b| a.tool.cmp(&b.tool));
    table
}

impl InstanceService {
    /// A quarantined tool of a type: its pin row, for review.
    pub fn pending_definition(&self, type_name: &str, tool: &str) -> Result<PinRow, InstanceError> {
        self.type_of(type_name)?;
        let pin = self
            .inner
            .audit
            .store()
            .read(|tx| sql::pin(tx, type_name, tool))?;
        match pin {
            Some(p) if p.status == PinStatus::Quarantined => Ok(p),
            Some(_) => Err(InstanceError::Invalid(format!(
                "tool `{tool}` of type `{type_name}` is pinned, not quarantined: nothing to review"
            ))),
            None => Err(InstanceError::Invalid(format!(
                "type `{type_name}` has no tool `{tool}` on record"
            ))),
        }
    }

    /// Records which approval covers a quarantined definition.
    pub fn set_pin_approval(
        &self,
        type_name: &str,
        tool: &str,
        approval_id: &str,
    ) -> Result<(), InstanceError> {
        let store = self.inner.audit.store();
        store.write(|tx| -> Result<(), StoreError> {
            if let Some(mut p) = sql::pin(tx, type_name, tool)? {
                p.approval_id = Some(approval_id.into());
                sql::put_pin(tx, &p)?;
            }
            Ok(())
        })?;
        Ok(())
    }

    /// Pins the approved pending definition (only if it is still the one with `hash`), and
    /// offers the tool again on every live instance of the type.
    pub fn approve_definition(
        &self,
        type_name: &str,
        tool: &str,
        hash: &str,
        by: &Actor,
    ) -> Result<bool, InstanceError> {
        let audit = &self.inner.audit;
        let now = now_ts();
        let done = audit.store().write(|tx| -> Result<bool, StoreError> {
            let Some(mut p) = sql::pin(tx, type_name, tool)? else {
                return Ok(false);
            };
            if p.status != PinStatus::Quarantined || p.pending_hash.as_deref() != Some(hash) {
                return Ok(false);
            }
            p.status = PinStatus::Pinned;
            p.hash = p.pending_hash.take();
            p.definition = p.pending_definition.take();
            p.flags = p.pending_flags.take().unwrap_or_else(|| "[]".into());
            p.updated_at = now.clone();
            sql::put_pin(tx, &p)?;
            audit.append_in(
                tx,
                &NewEvent {
                    actor: by.clone(),
                    action: Action::InstanceToolApproved,
                    subject: format!("{type_name}/{tool}"),
                    outcome: Outcome::Ok,
                    detail: json!({"type": type_name, "tool": tool, "hash": hash}),
                    critical: true,
                },
            )?;
            Ok(true)
        })?;
        Ok(done)
    }

    /// Re-applies pins and policy on every live instance of a type, and waits (at most 5 s)
    /// until their offered tools reflect it.
    pub async fn refresh_type(&self, type_name: &str) {
        let mut waits = Vec::new();
        for l in self
            .live_all()
            .into_iter()
            .filter(|l| l.type_name == type_name)
        {
            let (done, wait) = oneshot::channel();
            if l.cmd.send(Cmd::Refresh { done: Some(done) }).is_ok() {
                waits.push(wait);
            }
        }
        let all = async {
            for w in waits {
                let _ = w.await;
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(5), all).await;
    }
}

/// Prompt-injection flags of a tool's description, title and schema texts.
fn tool_flags(tool: &Tool) -> Vec<InjectionFlag> {
    let mut text = String::new();
    if let Some(d) = &tool.description {
        text.push_str(d);
    }
    if let Some(t) = &tool.title {
        text.push('\n');
        text.push_str(t);
    }
    collect_strings(&Value::Object((*tool.input_schema).clone()), &mut text);
    policy::injection_flags(&text)
}

fn collect_strings(v: &Value, out: &mut String) {
    match v {
        Value::String(s) => {
            out.push('\n');
            out.push_str(s);
        }
        Value::Array(a) => a.iter().for_each(|v| collect_strings(v, out)),
        Value::Object(m) => m.values().for_each(|v| collect_strings(v, out)),
        _ => {}
    }
}

fn flag_rules(flags: &[InjectionFlag]) -> String {
    flags
        .iter()
        .map(|f| f.rule.clone())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Which parts of a definition changed: `description`, `inputSchema`, ...
fn describe_change(old: Option<&str>, new: &Value) -> String {
    let old: Value = old
        .and_then(|o| serde_json::from_str(o).ok())
        .unwrap_or(Value::Null);
    let changed: Vec<&str> = [
        "title",
        "description",
        "inputSchema",
        "outputSchema",
        "annotations",
    ]
    .into_iter()
    .filter(|k| old.get(k) != new.get(k))
    .collect();
    if changed.is_empty() {
        "its definition".into()
    } else {
        changed.join(", ")
    }
}
