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

#[test]
fn approve_then_execute_once() -> Result<(), ApprovalError> {
    let s = service();
    let action = json!({"op": "restart", "target": "memory"});
    let a = s.request(new(action.clone(), Risk::Medium, None))?;
    assert_eq!(a.state, State::Pending);
    assert_eq!(a.action_hash, canonical::action_hash(&action));
    // Asking again for the same thing returns the same approval.
    assert_eq!(s.request(new(action.clone(), Risk::Medium, None))?.id, a.id);
    // Nothing runs before a decision.
    assert!(matches!(
        s.consume(&a.id, &action, &client()),
        Err(ApprovalError::NotExecutable(_))
    ));
    let d = s.decide(&a.id, verdict(State::Approved, Channel::ElicitationForm))?;
    assert_eq!(d.state, State::Approved);
    assert_eq!(
        d.decision.as_ref().map(|d| d.via),
        Some(Channel::ElicitationForm)
    );
    // A different action is not covered.
    let other = json!({"op": "restart", "target": "everything"});
    assert!(matches!(
        s.consume(&a.id, &other, &client()),
        Err(ApprovalError::NotExecutable(_))
    ));
    let done = s.consume(&a.id, &action, &client())?;
    assert!(done.executed_at.is_some());
    assert!(matches!(
        s.consume(&a.id, &action, &client()),
        Err(ApprovalError::NotExecutable(_))
    ));
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

#[test]
fn questions_redeem_once() -> Result<(), ApprovalError> {
    let s = service();
    let a = s.request(new(json!({"op": "q"}), Risk::Low, None))?;
    let nonce = s.ask(&a.id)?;
    let b = s.request(new(json!({"op": "other"}), Risk::Low, None))?;
    // A nonce issued for one approval does not decide another.
    let err = s.decide_with_question(
        &b.id,
        verdict(State::Approved, Channel::ElicitationForm),
        Some(&nonce),
    );
    assert!(matches!(err, Err(ApprovalError::Question(_))), "{err:?}");
    assert_eq!(s.get(&b.id)?.state, State::Pending);
    s.decide_with_question(
        &a.id,
        verdict(State::Approved, Channel::ElicitationForm),
        Some(&nonce),
    )?;
    let again = s.decide_with_question(
        &a.id,
        verdict(State::Approved, Channel::ElicitationForm),
        Some(&nonce),
    );
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
fn the_database_refuses_to_rewrite_a_decision() -> Result<(), ApprovalError> {
    let s = service();
    let a = s.request(new(json!({"op": "t"}), Risk::Low, None))?;
    s.decide(&a.id, verdict(State::Rejected, Channel::Cli))?;
    let conn = s.store().lock();
    let e = conn.execute(
        "UPDATE approvals SET state = 'approved' WHERE id = ?1",
        [&a.id],
    );
    assert!(e.is_err_and(|e| e.to_string().contains("final")));
    let e = conn.execute("UPDATE approvals SET action = '{}' WHERE id = ?1", [&a.id]);
    assert!(e.is_err());
    Ok(())
}

#[derive(Debug, Clone)]
enum Op {
    Request {
        action: u8,
        critical: bool,
        expired: bool,
    },
    Decide {
        approval: u8,
        state: u8,
        cli: bool,
    },
    Execute {
        approval: u8,
        action: u8,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0u8..3, any::<bool>(), prop::bool::weighted(0.15)).prop_map(
            |(action, critical, expired)| Op::Request {
                action,
                critical,
                expired
            }
        ),
        (0u8..8, 0u8..3, any::<bool>()).prop_map(|(approval, state, cli)| Op::Decide {
            approval,
            state,
            cli
        }),
        (0u8..8, 0u8..3).prop_map(|(approval, action)| Op::Execute { approval, action }),
    ]
}

/// What the model expects of one approval.
struct Model {
    id: String,
    action: u8,
    critical: bool,
    expired: bool,
    state: State,
    executed: bool,
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// An action executes only if an approved decision covers its exact hash, and at most once.
    #[test]
    fn actions_execute_only_when_approved_and_at_most_once(ops in prop::collection::vec(op(), 1..40)) {
        let s = service();
        let actions = [json!({"op": "a"}), json!({"op": "b"}), json!({"op": "a", "extra": 1})];
        let mut models: Vec<Model> = Vec::new();
        let mut executions = 0usize;
        for (n, op) in ops.into_iter().enumerate() {
            match op {
                Op::Request { action, critical, expired } => {
                    let mut req = new(
                        actions[action as usize].clone(),
                        if critical { Risk::Critical } else { Risk::High },
                        expired.then_some(0),
                    );
                    req.subject_id = format!("s{n}");
                    let a = s.request(req).map_err(|e| TestCaseError::fail(e.to_string()))?;
                    models.push(Model { id: a.id, action, critical, expired, state: State::Pending, executed: false });
                }
                Op::Decide { approval, state, cli } => {
                    let Some(m) = models.get_mut(approval as usize) else { continue };
                    let state = [State::Approved, State::Rejected, State::Cancelled][state as usize];
                    let via = if cli { Channel::Cli } else { Channel::ElicitationForm };
                    let result = s.decide(&m.id, verdict(state, via));
                    let expected = if m.expired {
                        m.state = State::Expired;
                        None
                    } else if m.state != State::Pending || (state == State::Approved && m.critical && !cli) {
                        // Decided already, or approving through the client where policy needs the CLI.
                        None
                    } else {
                        Some(state)
                    };
                    match (&result, expected) {
                        (Ok(a), Some(st)) => { prop_assert_eq!(a.state, st); m.state = st; }
                        (Err(_), None) => {}
                        (r, e) => prop_assert!(false, "decide: got {:?}, expected {:?}", r, e),
                    }
                }
                Op::Execute { approval, action } => {
                    let Some(m) = models.get_mut(approval as usize) else { continue };
                    if m.expired { m.state = State::Expired; }
                    let allowed = m.state == State::Approved
                        && canonical::action_hash(&actions[action as usize]) == canonical::action_hash(&actions[m.action as usize])
                        && !m.executed;
                    let result = s.consume(&m.id, &actions[action as usize], &client());
                    prop_assert_eq!(result.is_ok(), allowed, "execute {:?}", result);
                    if result.is_ok() { m.executed = true; executions += 1; }
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
