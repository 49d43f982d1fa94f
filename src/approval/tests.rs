//! Tests of the approval service: lifecycle, finality, expiry, policy, the execute-once gate,
//! and a property test over random sequences of requests, decisions and executions.

use std::sync::Arc;

use proptest::prelude::*;
use serde_json::json;

use super::*;
use crate::audit::{ActorKind, AuditSigner};
use crate::store::Location;

fn service() -> ApprovalService {
    let store = Store::open(&Location::Memory).unwrap_or_else(|e| panic!("{e}"));
    let signer = AuditSigner::from_key(ed25519_dalek::SigningKey::from_bytes(&[3u8; 32]));
    ApprovalService::new(
        AuditLog::new(store, Arc::new(signer)),
        ApprovalPolicy::default(),
    )
}

fn client() -> Actor {
    Actor::new(ActorKind::Client, "test/1")
}

fn new(action: Value, risk: Risk, expires: Option<u64>) -> NewApproval {
    NewApproval {
        kind: Kind::Generic,
        subject_id: String::new(),
        summary: "do the thing".into(),
        action,
        risk,
        preview: None,
        requested_by: client(),
        expires_in_seconds: expires,
    }
}

fn verdict(state: State, via: Channel) -> Verdict {
    Verdict {
        state,
        by: match via {
            Channel::Cli => Actor::os_user(),
            _ => client(),
        },
        via,
        reason: Some("because".into()),
        cause: None,
        context: json!({}),
    }
}

fn gate(executor: Executor, subject: &str, action: Value, risk: Risk) -> Gate {
    Gate {
        executor,
        subject_id: subject.into(),
        summary: format!("run {executor}"),
        action,
        risk,
        preview: None,
    }
}

#[test]
fn approve_then_execute_once() -> Result<(), ApprovalError> {
    let s = service();
    let action = json!({"op": "restart", "target": "memory"});
    let g = gate(
        Executor::ChildToolCall,
        "kid__restart",
        action.clone(),
        Risk::Medium,
    );
    let a = s.open(&g, &client())?;
    assert_eq!(a.state, State::Pending);
    assert_eq!(a.kind, Kind::InstanceToolCall);
    assert_eq!(a.action_hash, canonical::action_hash(&action));
    // Opening the same gate again returns the same approval.
    assert_eq!(s.open(&g, &client())?.id, a.id);
    // Nothing runs before a decision.
    assert!(matches!(
        s.consume(&a.id, &g, &client()),
        Err(ApprovalError::NotExecutable(_))
    ));
    let d = s.decide(&a.id, verdict(State::Approved, Channel::ElicitationForm))?;
    assert_eq!(d.state, State::Approved);
    assert_eq!(
        d.decision.as_ref().map(|d| d.via),
        Some(Channel::ElicitationForm)
    );
    // Approved and not run yet: opening the gate finds it (a call retried after a decision
    // made elsewhere runs without asking again).
    assert_eq!(s.open(&g, &client())?.id, a.id);
    // A different action is not covered.
    let other = gate(
        Executor::ChildToolCall,
        "kid__restart",
        json!({"op": "restart", "target": "everything"}),
        Risk::Medium,
    );
    assert!(matches!(
        s.consume(&a.id, &other, &client()),
        Err(ApprovalError::NotExecutable(_))
    ));
    let done = s.consume(&a.id, &g, &client())?;
    assert!(done.executed_at.is_some());
    assert!(matches!(
        s.consume(&a.id, &g, &client()),
        Err(ApprovalError::NotExecutable(_))
    ));
    // Once run, the gate opens a new question.
    assert_ne!(s.open(&g, &client())?.id, a.id);
    // Decisions are final.
    assert!(matches!(
        s.decide(&a.id, verdict(State::Rejected, Channel::Cli)),
        Err(ApprovalError::AlreadyDecided {
            state: State::Approved,
            ..
        })
    ));
    let report = s.audit.verify()?;
    assert!(report.ok);
    // Decision and execution are critical: each signed the head.
    assert_eq!(report.signatures.valid, 2);
    Ok(())
}

#[test]
fn an_approval_authorises_exactly_one_executor() -> Result<(), ApprovalError> {
    let s = service();
    let action = json!({"remediation": "rem_1", "actions": []});
    let apply = gate(
        Executor::RemediationApply,
        "rem_1",
        action.clone(),
        Risk::High,
    );
    // A generic approval of the very same action, approved in the client, passes no gate.
    let generic = s.request(NewApproval {
        subject_id: "rem_1".into(),
        ..new(action.clone(), Risk::High, None)
    })?;
    s.decide(
        &generic.id,
        verdict(State::Approved, Channel::ElicitationForm),
    )?;
    let e = s.consume(&generic.id, &apply, &client());
    assert!(
        matches!(&e, Err(ApprovalError::NotExecutable(m)) if m.contains("generic")),
        "{e:?}"
    );
    // Nor does one of another executor, another subject or another risk.
    let a = s.open(&apply, &client())?;
    assert_ne!(a.id, generic.id);
    s.decide(&a.id, verdict(State::Approved, Channel::ElicitationForm))?;
    for (other, word) in [
        (
            gate(Executor::PipelineStage, "rem_1", action.clone(), Risk::High),
            "pipeline_stage",
        ),
        (
            gate(
                Executor::RemediationApply,
                "rem_2",
                action.clone(),
                Risk::High,
            ),
            "rem_2",
        ),
        (
            gate(
                Executor::RemediationApply,
                "rem_1",
                action.clone(),
                Risk::Low,
            ),
            "low",
        ),
    ] {
        let e = s.consume(&a.id, &other, &client());
        assert!(
            matches!(&e, Err(ApprovalError::NotExecutable(m)) if m.contains(word)),
            "{word}: {e:?}"
        );
    }
    s.consume(&a.id, &apply, &client())?;
    // Non-generic approvals are only opened by a gate.
    let e = s.request(NewApproval {
        kind: Kind::Remediation,
        ..new(action, Risk::Low, None)
    });
    assert!(
        matches!(e, Err(ApprovalError::Invalid { field: "kind", .. })),
        "{e:?}"
    );
    Ok(())
}

#[test]
fn a_policy_tightened_after_the_decision_stops_the_executor() -> Result<(), ApprovalError> {
    let s = service();
    let g = gate(
        Executor::ToolReview,
        "t/echo",
        json!({"review": 1}),
        Risk::High,
    );
    let a = s.open(&g, &client())?;
    assert_eq!(a.decide_with, DecideWith::Elicitation);
    s.decide(&a.id, verdict(State::Approved, Channel::ElicitationForm))?;
    // Another process on the same database, whose policy wants high-risk decisions out of band.
    let strict = ApprovalService::new(
        s.audit.clone(),
        ApprovalPolicy {
            rules: vec![policy::PolicyRule {
                kind: None,
                risk: Some(Risk::High),
                decide_with: DecideWith::OutOfBand,
                expiry_seconds: None,
            }],
            ..ApprovalPolicy::default()
        },
    );
    let e = strict.consume(&a.id, &g, &client());
    assert!(
        matches!(&e, Err(ApprovalError::NotExecutable(m)) if m.contains("out-of-band")),
        "{e:?}"
    );
    // It opens a question of its own instead, which only the CLI may approve.
    let b = strict.open(&g, &client())?;
    assert_ne!(b.id, a.id);
    assert_eq!(b.decide_with, DecideWith::OutOfBand);
    Ok(())
}

#[test]
fn expired_approvals_cannot_be_approved_by_anyone() -> Result<(), ApprovalError> {
    let s = service();
    let a = s.request(new(json!({"op": "x"}), Risk::Low, Some(0)))?;
    let err = s.decide(&a.id, verdict(State::Approved, Channel::Cli));
    assert!(matches!(err, Err(ApprovalError::Expired { .. })), "{err:?}");
    let a = s.get(&a.id)?;
    assert_eq!(a.state, State::Expired);
    assert_eq!(a.decision.map(|d| d.via), Some(Channel::Expiry));
    Ok(())
}

#[test]
fn critical_needs_the_cli_but_can_be_refused_anywhere() -> Result<(), ApprovalError> {
    let s = service();
    let a = s.request(new(json!({"op": "rm"}), Risk::Critical, None))?;
    assert_eq!(a.decide_with, DecideWith::OutOfBand);
    let err = s.decide(&a.id, verdict(State::Approved, Channel::ElicitationForm));
    assert!(
        matches!(err, Err(ApprovalError::OutOfBandRequired { .. })),
        "{err:?}"
    );
    assert_eq!(s.get(&a.id)?.state, State::Pending);
    assert_eq!(
        s.decide(&a.id, verdict(State::Approved, Channel::Cli))?
            .state,
        State::Approved
    );

    let b = s.request(new(json!({"op": "rm", "n": 2}), Risk::Critical, None))?;
    assert_eq!(
        s.decide(&b.id, verdict(State::Rejected, Channel::ElicitationForm))?
            .state,
        State::Rejected
    );
    Ok(())
}

fn approve_in_client() -> Verdict {
    verdict(State::Approved, Channel::ElicitationForm)
}

#[test]
fn questions_redeem_once_and_only_where_they_were_asked() -> Result<(), ApprovalError> {
    let s = service();
    let a = s.request(new(json!({"op": "q"}), Risk::Low, None))?;
    let b = s.request(new(json!({"op": "other"}), Risk::Low, None))?;
    let ticket = Ticket::for_question(&a, "approval_request", s.ask(&a.id)?);
    // A nonce issued for one approval does not decide another.
    let forged = Ticket {
        nonce: ticket.nonce.clone(),
        ..Ticket::for_question(&b, "approval_request", String::new())
    };
    let err = s.answer(&forged, "approval_request", None, approve_in_client());
    assert!(matches!(err, Err(ApprovalError::Question(_))), "{err:?}");
    assert_eq!(s.get(&b.id)?.state, State::Pending);
    // A question asked by one tool is not answered through another, and records nothing.
    let err = s.answer(&ticket, "kid__echo", None, approve_in_client());
    assert!(matches!(err, Err(ApprovalError::Question(_))), "{err:?}");
    assert_eq!(s.get(&a.id)?.state, State::Pending);
    // Nor through a gated call, even one whose action hashes the same.
    let g = gate(Executor::ChildToolCall, "", json!({"op": "q"}), Risk::Low);
    let err = s.answer(&ticket, "approval_request", Some(&g), approve_in_client());
    assert!(matches!(err, Err(ApprovalError::Question(_))), "{err:?}");
    assert_eq!(s.get(&a.id)?.state, State::Pending);
    s.answer(&ticket, "approval_request", None, approve_in_client())?;
    let again = s.answer(&ticket, "approval_request", None, approve_in_client());
    // Named as a replay, not merely as "already decided".
    assert!(
        matches!(&again, Err(ApprovalError::Question(m)) if m.contains("replayed")),
        "{again:?}"
    );
    Ok(())
}

#[test]
fn list_filters_and_pages() -> Result<(), ApprovalError> {
    let s = service();
    for i in 0..5 {
        s.request(new(json!({"n": i}), Risk::Low, None))?;
    }
    let first = s.list(&ListFilter {
        limit: 2,
        ..Default::default()
    })?;
    assert_eq!(first.approvals.len(), 2);
    let second = s.list(&ListFilter {
        limit: 2,
        cursor: first.next_cursor.clone(),
        ..Default::default()
    })?;
    assert_eq!(second.approvals.len(), 2);
    assert!(
        second
            .approvals
            .iter()
            .all(|a| first.approvals.iter().all(|b| a.id != b.id))
    );
    let id = first.approvals[0].id.clone();
    s.decide(&id, verdict(State::Rejected, Channel::Cli))?;
    let rejected = s.list(&ListFilter {
        state: Some(State::Rejected),
        limit: 10,
        ..Default::default()
    })?;
    assert_eq!(rejected.approvals.len(), 1);
    assert_eq!(rejected.approvals[0].id, id);
    Ok(())
}

#[test]
fn search_narrows_by_risk_requester_and_time() -> Result<(), ApprovalError> {
    let s = service();
    let low = s.request(new(json!({"n": 1}), Risk::Low, None))?;
    let mut by_percent = new(json!({"n": 2}), Risk::High, None);
    by_percent.requested_by = Actor::new(ActorKind::Client, "100%_sure/2");
    let high = s.request(by_percent)?;
    let ids = |f: SearchFilter| -> Result<Vec<String>, ApprovalError> {
        Ok(s.search(&f)?.approvals.into_iter().map(|a| a.id).collect())
    };
    let high_only = ids(SearchFilter {
        risk: Some(Risk::High),
        ..Default::default()
    })?;
    assert_eq!(high_only, std::slice::from_ref(&high.id));
    // The requester text is matched literally: `%` and `_` are not wildcards.
    let literal = ids(SearchFilter {
        requester: Some("0%_SURE".into()),
        ..Default::default()
    })?;
    assert_eq!(literal, std::slice::from_ref(&high.id));
    let wildcard = ids(SearchFilter {
        requester: Some("t%1".into()),
        ..Default::default()
    })?;
    assert!(wildcard.is_empty(), "{wildcard:?}");
    let after_low = ids(SearchFilter {
        created_after: Some(high.created_at.clone()),
        ..Default::default()
    })?;
    assert_eq!(after_low, std::slice::from_ref(&high.id));
    let before_high = ids(SearchFilter {
        created_before: Some(high.created_at.clone()),
        ..Default::default()
    })?;
    assert_eq!(before_high, std::slice::from_ref(&low.id));
    Ok(())
}

#[test]
fn the_database_refuses_to_rewrite_a_decision() -> Result<(), ApprovalError> {
    let s = service();
    let a = s.request(new(json!({"op": "t"}), Risk::Low, None))?;
    s.decide(&a.id, verdict(State::Rejected, Channel::Cli))?;
    let store = s.store();
    let e = store.execute_for_test(&format!(
        "UPDATE approvals SET state = 'approved' WHERE id = '{}'",
        a.id
    ));
    assert!(e.is_err_and(|e| e.to_string().contains("final")));
    let e = store.execute_for_test(&format!(
        "UPDATE approvals SET action = '{{}}' WHERE id = '{}'",
        a.id
    ));
    assert!(e.is_err());
    Ok(())
}

/// One approval's identity in the property test: which executor's gate opened it (`None`:
/// a generic `approval_request`), and indexes into small sets of subjects, actions and risks,
/// so that random calls often collide in some fields and differ in others.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Spec {
    executor: Option<Executor>,
    subject: u8,
    action: u8,
    risk: Risk,
}

const SUBJECTS: [&str; 2] = ["s0", "s1"];
const RISKS: [Risk; 4] = [Risk::Low, Risk::Medium, Risk::High, Risk::Critical];
const TOOLS: [&str; 2] = ["t0", "t1"];

fn actions() -> [Value; 3] {
    [
        json!({"op": "a"}),
        json!({"op": "b"}),
        json!({"op": "a", "extra": 1}),
    ]
}

fn spec() -> impl Strategy<Value = Spec> {
    (
        prop::option::weighted(0.8, prop::sample::select(Executor::ALL.to_vec())),
        0u8..2,
        0u8..3,
        prop::sample::select(RISKS.to_vec()),
    )
        .prop_map(|(executor, subject, action, risk)| Spec {
            executor,
            subject,
            action,
            risk,
        })
}

impl Spec {
    fn kind(self) -> Kind {
        self.executor.map_or(Kind::Generic, Executor::kind)
    }
    fn gate(self) -> Option<Gate> {
        self.executor.map(|e| {
            gate(
                e,
                SUBJECTS[self.subject as usize],
                actions()[self.action as usize].clone(),
                self.risk,
            )
        })
    }
    /// Whether an approval opened for `self` lets the gate `other` through (kind, subject,
    /// action hash and risk all equal; decide_with follows from kind and risk).
    fn passes(self, other: Spec) -> bool {
        other.executor.is_some()
            && self.kind() == other.kind()
            && self.subject == other.subject
            && canonical::action_hash(&actions()[self.action as usize])
                == canonical::action_hash(&actions()[other.action as usize])
            && self.risk == other.risk
    }
}

/// The test's policy: the built-in one (critical needs the CLI) plus pipeline stages of high
/// risk out of band, so that decide_with varies by kind as well as by risk.
fn test_policy() -> ApprovalPolicy {
    ApprovalPolicy {
        rules: vec![policy::PolicyRule {
            kind: Some(Kind::PipelineStage),
            risk: Some(Risk::High),
            decide_with: DecideWith::OutOfBand,
            expiry_seconds: None,
        }],
        ..ApprovalPolicy::default()
    }
}

#[derive(Debug, Clone)]
enum Op {
    /// An executor opens its gate, or a client asks a generic question.
    Open { spec: Spec, expired: bool },
    /// A person decides approval `approval` in the client or at the CLI.
    Decide { approval: u8, state: u8, cli: bool },
    /// A question is asked about `approval` by tool `asked_by`; the answer comes back on a
    /// retry of tool `to` with gate `gate` (None: `approval_request`).
    Answer {
        approval: u8,
        asked_by: u8,
        to: u8,
        gate: Option<Spec>,
        own_gate: bool,
        state: u8,
    },
    /// An executor with gate `gate` (or the approval's own, when `own_gate`) tries to run with
    /// approval `approval`.
    Execute {
        approval: u8,
        gate: Spec,
        own_gate: bool,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (spec(), prop::bool::weighted(0.15)).prop_map(|(spec, expired)| Op::Open { spec, expired }),
        (0u8..8, 0u8..3, any::<bool>()).prop_map(|(approval, state, cli)| Op::Decide {
            approval,
            state,
            cli
        }),
        (
            0u8..8,
            0u8..2,
            0u8..2,
            prop::option::of(spec()),
            any::<bool>(),
            0u8..3
        )
            .prop_map(
                |(approval, asked_by, to, gate, own_gate, state)| Op::Answer {
                    approval,
                    asked_by,
                    to,
                    gate,
                    own_gate,
                    state
                }
            ),
        (0u8..8, spec(), any::<bool>()).prop_map(|(approval, gate, own_gate)| Op::Execute {
            approval,
            gate,
            own_gate
        }),
    ]
}

/// What the model expects of one approval.
struct Model {
    id: String,
    spec: Spec,
    expired: bool,
    out_of_band: bool,
    state: State,
    executed: bool,
}

impl Model {
    /// Marks it expired if its (zero) expiry has passed and no one decided it.
    fn age(&mut self) {
        if self.expired && self.state == State::Pending {
            self.state = State::Expired;
        }
    }

    /// Whether a decision `state` through `via` is recorded now.
    fn accepts(&self, state: State, cli: bool) -> bool {
        self.state == State::Pending && (state != State::Approved || cli || !self.out_of_band)
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    /// The gate's property, over every executor: nothing executes without an approved decision
    /// made for its own kind, subject, action hash and risk, under its policy, and nothing
    /// executes twice; a question answers only the call that asked it, and a refused answer
    /// records nothing. Every execution is in the signed audit log once.
    #[test]
    fn nothing_runs_without_its_own_approval_and_never_twice(ops in prop::collection::vec(op(), 1..48)) {
        let s = ApprovalService::new(service().audit.clone(), test_policy());
        let fail = |e: ApprovalError| TestCaseError::fail(e.to_string());
        let mut models: Vec<Model> = Vec::new();
        let mut executions = 0usize;
        let states = [State::Approved, State::Rejected, State::Cancelled];
        for op in ops {
            match op {
                Op::Open { spec, expired } => {
                    // Expiry is asked only of generic approvals (a gate takes the policy's).
                    let expired = expired && spec.executor.is_none();
                    models.iter_mut().for_each(Model::age);
                    let a = match spec.gate() {
                        Some(g) => s.open(&g, &client()).map_err(fail)?,
                        None => {
                            let mut req = new(actions()[spec.action as usize].clone(), spec.risk, expired.then_some(0));
                            req.subject_id = SUBJECTS[spec.subject as usize].into();
                            s.request(req).map_err(fail)?
                        }
                    };
                    // A gate reuses the newest pending-or-approved-unexecuted approval of its
                    // exact spec; a generic request the newest pending one of its spec.
                    let reusable = models.iter().rev().find(|m| {
                        m.spec.kind() == spec.kind()
                            && m.spec.subject == spec.subject
                            && canonical::action_hash(&actions()[m.spec.action as usize])
                                == canonical::action_hash(&actions()[spec.action as usize])
                            && (spec.executor.is_none() || m.spec.risk == spec.risk)
                            && (m.state == State::Pending
                                || (spec.executor.is_some() && m.state == State::Approved && !m.executed))
                    });
                    match reusable {
                        Some(m) => prop_assert_eq!(&a.id, &m.id, "open {:?} should reuse", spec),
                        None => {
                            prop_assert!(models.iter().all(|m| m.id != a.id), "open {:?} reused {}", spec, a.id);
                            let out_of_band = a.decide_with == DecideWith::OutOfBand;
                            prop_assert_eq!(out_of_band, spec.risk == Risk::Critical
                                || (spec.kind() == Kind::PipelineStage && spec.risk == Risk::High));
                            models.push(Model { id: a.id, spec, expired, out_of_band, state: State::Pending, executed: false });
                        }
                    }
                }
                Op::Decide { approval, state, cli } => {
                    let Some(m) = models.get_mut(approval as usize) else { continue };
                    m.age();
                    let state = states[state as usize];
                    let via = if cli { Channel::Cli } else { Channel::ElicitationForm };
                    let result = s.decide(&m.id, verdict(state, via));
                    let ok = m.accepts(state, cli);
                    prop_assert_eq!(result.is_ok(), ok, "decide {:?}", result);
                    if ok { m.state = state; }
                }
                Op::Answer { approval, asked_by, to, gate, own_gate, state } => {
                    let Some(m) = models.get_mut(approval as usize) else { continue };
                    // A spec without an executor stands for a retry of `approval_request` (no gate).
                    let gate = if own_gate { Some(m.spec) } else { gate }.filter(|g| g.executor.is_some());
                    let current = s.get(&m.id).map_err(fail)?;
                    m.age();
                    let ticket = Ticket::for_question(&current, TOOLS[asked_by as usize], s.ask(&m.id).map_err(fail)?);
                    let state = states[state as usize];
                    let before = s.get(&m.id).map_err(fail)?.state;
                    let result = s.answer(
                        &ticket,
                        TOOLS[to as usize],
                        gate.and_then(Spec::gate).as_ref(),
                        verdict(state, Channel::ElicitationForm),
                    );
                    let ok = asked_by == to
                        && gate.is_none_or(|g| m.spec.passes(g))
                        && m.accepts(state, false);
                    prop_assert_eq!(result.is_ok(), ok, "answer {:?} of {:?} to {:?}", result, m.spec, gate);
                    if ok {
                        m.state = state;
                    } else {
                        // A refused answer records nothing.
                        prop_assert_eq!(s.get(&m.id).map_err(fail)?.state, if before == State::Pending && m.state == State::Expired { State::Expired } else { before });
                    }
                }
                Op::Execute { approval, gate, own_gate } => {
                    let Some(m) = models.get_mut(approval as usize) else { continue };
                    m.age();
                    let gate = if own_gate && m.spec.executor.is_some() { m.spec } else { gate };
                    let Some(g) = gate.gate() else { continue };
                    let allowed = m.state == State::Approved && !m.executed && m.spec.passes(gate);
                    let result = s.consume(&m.id, &g, &client());
                    prop_assert_eq!(result.is_ok(), allowed, "execute {:?} with {:?}: {:?}", m.spec, gate, result);
                    if allowed { m.executed = true; executions += 1; }
                }
            }
        }
        // Every execution is in the signed audit log, once per approval.
        let events = s.audit.query(&crate::audit::Query {
            action: Some("approval.executed".into()), limit: Some(500), ..Default::default()
        }).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(events.events.len(), executions);
        let mut subjects: Vec<&str> = events.events.iter().map(|e| e.subject.as_str()).collect();
        subjects.sort_unstable();
        subjects.dedup();
        prop_assert_eq!(subjects.len(), executions);
        prop_assert!(s.audit.verify().map_err(|e| TestCaseError::fail(e.to_string()))?.ok);
    }
}
