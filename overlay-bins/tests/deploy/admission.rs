//! A ValidatingAdmissionPolicy (admissionregistration.k8s.io/v1) evaluated
//! the way kube-apiserver evaluates it, with cel-rust and CEL's standard
//! library only (an expression that needs a Kubernetes CEL library does not
//! compile here, which keeps the policy within what every 1.30+ API server
//! has):
//!
//! - `matchConstraints.resourceRules` select the request by API group,
//!   resource (`resource/subresource`) and operation; `matchConditions` must
//!   all be true (an error counts as a failure: `failurePolicy: Fail`);
//! - `variables` are evaluated in order, each seeing the earlier ones as
//!   `variables.NAME`; one that fails is left out, so a validation that
//!   uses it fails too;
//! - every validation must evaluate to `true`; `false` denies with its
//!   `messageExpression` (falling back to `message`), an error denies with
//!   the error (`failurePolicy: Fail`).

use std::collections::HashMap;

use cel::{Context, Program, Value as Cel};
use serde_json::{Value, json};

/// How the policy decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// The request is outside `matchConstraints`, or a `matchCondition` is
    /// false: the policy does not apply.
    NotMatched,
    /// Every validation passed.
    Allowed,
    /// The messages of the validations that failed, in order.
    Denied(Vec<String>),
}

impl Decision {
    /// The denial messages joined, or a panic naming what happened instead.
    pub fn denied(&self) -> String {
        match self {
            Decision::Denied(m) => m.join("\n"),
            other => panic!("expected a denial, got {other:?}"),
        }
    }
}

struct Validation {
    source: String,
    program: Program,
    message: Option<String>,
    message_expression: Option<Program>,
}

/// A compiled policy.
pub struct Policy {
    rules: Vec<Value>,
    match_conditions: Vec<(String, Program)>,
    variables: Vec<(String, Program)>,
    validations: Vec<Validation>,
}

fn compile(what: &str, source: &str) -> Program {
    Program::compile(source).unwrap_or_else(|e| panic!("{what}: does not compile: {e}\n{source}"))
}

fn strs(v: &Value) -> Vec<&str> {
    v.as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

impl Policy {
    /// Compiles the `spec` of a ValidatingAdmissionPolicy.
    pub fn new(spec: &Value) -> Self {
        assert_eq!(
            spec["failurePolicy"], "Fail",
            "these semantics are failurePolicy: Fail"
        );
        let exprs = |field: &str| -> Vec<(String, Program)> {
            spec[field]
                .as_array()
                .into_iter()
                .flatten()
                .map(|m| {
                    let name = m["name"].as_str().unwrap().to_owned();
                    let src = m["expression"].as_str().unwrap();
                    let p = compile(&format!("{field} {name}"), src);
                    (name, p)
                })
                .collect()
        };
        let validations = spec["validations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| {
                let source = v["expression"].as_str().unwrap().to_owned();
                // The API server refuses a policy whose message has a line
                // break.
                if let Some(m) = v["message"].as_str() {
                    assert!(!m.contains('\n'), "a message with a line break: {m:?}");
                }
                Validation {
                    program: compile("validation", &source),
                    message: v["message"].as_str().map(str::to_owned),
                    message_expression: v["messageExpression"]
                        .as_str()
                        .map(|m| compile("messageExpression", m)),
                    source,
                }
            })
            .collect();
        Self {
            rules: spec["matchConstraints"]["resourceRules"]
                .as_array()
                .unwrap()
                .clone(),
            match_conditions: exprs("matchConditions"),
            variables: exprs("variables"),
            validations,
        }
    }

    fn selects(&self, request: &Value) -> bool {
        let group = request["resource"]["group"].as_str().unwrap_or_default();
        let mut resource = request["resource"]["resource"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        if let Some(sub) = request["subResource"].as_str().filter(|s| !s.is_empty()) {
            resource = format!("{resource}/{sub}");
        }
        let op = request["operation"].as_str().unwrap_or_default();
        self.rules.iter().any(|r| {
            let any =
                |field: &str, want: &str| strs(&r[field]).iter().any(|v| *v == "*" || *v == want);
            any("apiGroups", group) && any("resources", &resource) && any("operations", op)
        })
    }

    /// Decides an admission `request` (an AdmissionRequest as JSON) for
    /// `object` (the object after the write, `null` on DELETE) and
    /// `old_object` (before it, `null` on CREATE).
    pub fn admit(&self, request: &Value, object: &Value, old_object: &Value) -> Decision {
        if !self.selects(request) {
            return Decision::NotMatched;
        }
        let mut ctx = Context::default();
        ctx.add_variable("request", request).unwrap();
        ctx.add_variable("object", object).unwrap();
        ctx.add_variable("oldObject", old_object).unwrap();
        ctx.add_variable("params", Value::Null).unwrap();
        ctx.add_variable("namespaceObject", Value::Null).unwrap();
        for (name, p) in &self.match_conditions {
            match p.execute(&ctx) {
                Ok(Cel::Bool(true)) => {}
                Ok(Cel::Bool(false)) => return Decision::NotMatched,
                other => {
                    return Decision::Denied(vec![format!(
                        "failed to evaluate matchCondition {name}: {other:?}"
                    )]);
                }
            }
        }
        let mut vars: HashMap<String, Cel> = HashMap::new();
        for (name, p) in &self.variables {
            ctx.add_variable_from_value("variables", vars.clone());
            if let Ok(v) = p.execute(&ctx) {
                vars.insert(name.clone(), v);
            }
        }
        ctx.add_variable_from_value("variables", vars);
        let mut denied = Vec::new();
        for v in &self.validations {
            match v.program.execute(&ctx) {
                Ok(Cel::Bool(true)) => {}
                Ok(Cel::Bool(false)) => {
                    let from_expression = v.message_expression.as_ref().map(|m| m.execute(&ctx));
                    denied.push(match (from_expression, &v.message) {
                        // A result with a line break is an error there.
                        (Some(Ok(Cel::String(s))), _) if !s.contains('\n') => s.to_string(),
                        (Some(other), _) => panic!(
                            "messageExpression of {:?} does not give a string: {other:?}",
                            v.source
                        ),
                        (None, Some(m)) => m.clone(),
                        (None, None) => format!("failed expression: {}", v.source),
                    });
                }
                other => denied.push(format!(
                    "expression {:?} resulted in error: {other:?}",
                    v.source
                )),
            }
        }
        if denied.is_empty() {
            Decision::Allowed
        } else {
            Decision::Denied(denied)
        }
    }
}

/// Who makes a request: a username, its groups and its extra.
pub struct User {
    pub username: String,
    pub groups: Vec<String>,
    pub extra: Option<Value>,
}

/// The agent's ServiceAccount with a token bound to a Pod on `node` (what
/// the kubelet projects), as the API server saw it (apiserver-facts.md).
pub fn agent_on(node: &str) -> User {
    User {
        extra: Some(json!({
            "authentication.kubernetes.io/node-name": [node],
            "authentication.kubernetes.io/node-uid": ["15df5f57-0000-4000-8000-000000000001"],
            "authentication.kubernetes.io/pod-name": [format!("overlay-agent-{node}")],
            "authentication.kubernetes.io/pod-uid": ["608939b8-0000-4000-8000-000000000002"],
        })),
        ..service_account("overlay-system", "overlay-agent")
    }
}

/// A ServiceAccount token without Pod binding (no extra at all).
pub fn service_account(namespace: &str, name: &str) -> User {
    User {
        username: format!("system:serviceaccount:{namespace}:{name}"),
        groups: vec![
            "system:serviceaccounts".into(),
            format!("system:serviceaccounts:{namespace}"),
            "system:authenticated".into(),
        ],
        extra: None,
    }
}

/// An AdmissionRequest for `operation` on NodeOverlayIp `name`
/// (`subresource` "status" or ""), by `user`.
pub fn noip_request(user: &User, operation: &str, name: &str, subresource: &str) -> Value {
    let mut user_info = json!({"username": user.username, "uid": "u-1", "groups": user.groups});
    if let Some(extra) = &user.extra {
        user_info["extra"] = extra.clone();
    }
    let gvr = json!({"group": "iks.ibm.com", "version": "v1alpha1", "resource": "nodeoverlayips"});
    let gvk = json!({"group": "iks.ibm.com", "version": "v1alpha1", "kind": "NodeOverlayIp"});
    json!({
        "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
        "kind": gvk, "resource": gvr, "subResource": subresource,
        "requestKind": gvk, "requestResource": gvr, "requestSubResource": subresource,
        "name": name, "operation": operation, "userInfo": user_info,
        "dryRun": false,
    })
}
