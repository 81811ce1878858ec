//! CAM-style policies: grammar, operators, evaluation semantics and tenant isolation.

use std::net::IpAddr;

use proptest::prelude::*;
use protocol::EnvId;
use serde_json::{Value, json};
use tenancy::policy::{
    AccessRequest, Context, ContextValue, Decision, Policy, PolicyError, env_child_resource, env_resource,
    evaluate_all, keys, owner_of_env,
};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

const RES: &str = "vrn:vibebase:env/app/db/users";

fn pol(v: Value) -> Policy {
    Policy::parse(&v).unwrap_or_else(|e| panic!("policy should parse: {e}\n{v}"))
}

fn one(statement: Value) -> Policy {
    pol(json!({"version": "2.0", "statement": [statement]}))
}

fn decide(p: &Policy, action: &str, resource: &str, context: &Context) -> Decision {
    p.evaluate(&AccessRequest { action, resource, context })
}

/// An allow-everything policy guarded by `condition`.
fn guarded(condition: Value) -> Policy {
    one(json!({"effect": "allow", "action": "*", "resource": "*", "condition": condition}))
}

/// Whether `condition` holds for `context`.
fn holds(condition: Value, context: &Context) -> bool {
    match decide(&guarded(condition), "db:Query", RES, context) {
        Decision::Allow => true,
        Decision::ImplicitDeny => false,
        Decision::ExplicitDeny => panic!("no deny statement here"),
    }
}

fn err(v: Value) -> PolicyError {
    match Policy::parse(&v) {
        Ok(p) => panic!("expected an error, parsed {p:?} from {v}"),
        Err(e) => e,
    }
}

/// A one-statement policy whose statement is `statement`, expected to be rejected.
fn stmt_err(statement: Value) -> PolicyError {
    err(json!({"version": "2.0", "statement": [statement]}))
}

fn cond_err(condition: Value) -> PolicyError {
    stmt_err(json!({"effect": "allow", "action": "*", "resource": "*", "condition": condition}))
}

fn s(v: &str) -> ContextValue {
    ContextValue::String(v.to_owned())
}

fn ip(v: &str) -> ContextValue {
    ContextValue::Ip(v.parse::<IpAddr>().unwrap())
}

fn at(v: &str) -> ContextValue {
    ContextValue::Time(OffsetDateTime::parse(v, &Rfc3339).unwrap())
}

fn env(id: &str) -> EnvId {
    EnvId::parse(id).unwrap()
}

fn ctx1(key: &str, value: ContextValue) -> Context {
    Context::new().with(key, value)
}

// ---------------------------------------------------------------------------------------------
// String operators
// ---------------------------------------------------------------------------------------------

#[test]
fn string_equal() {
    let c = json!({"string_equal": {"vb:env": "app"}});
    assert!(holds(c.clone(), &ctx1(keys::ENV, s("app"))));
    assert!(!holds(c.clone(), &ctx1(keys::ENV, s("App"))));
    assert!(!holds(c.clone(), &ctx1(keys::ENV, s("app2"))));
    assert!(!holds(c.clone(), &Context::new()), "missing key: positive operator fails");
    assert!(!holds(c, &ctx1(keys::ENV, ContextValue::Bool(true))), "wrong type fails");
    // Several values: any one suffices.
    let c = json!({"string_equal": {"vb:env": ["a", "b", "app"]}});
    assert!(holds(c.clone(), &ctx1(keys::ENV, s("b"))));
    assert!(!holds(c, &ctx1(keys::ENV, s("c"))));
}

#[test]
fn string_equal_if_exist() {
    let c = json!({"string_equal_if_exist": {"vb:env": ["app", "other"]}});
    assert!(holds(c.clone(), &Context::new()), "missing key: _if_exist holds");
    assert!(holds(c.clone(), &ctx1(keys::ENV, s("other"))));
    assert!(!holds(c.clone(), &ctx1(keys::ENV, s("third"))));
    assert!(!holds(c, &ctx1(keys::ENV, ContextValue::Number(1.0))), "wrong type fails");
}

#[test]
fn string_not_equal() {
    let c = json!({"string_not_equal": {"vb:principal": ["root", "admin"]}});
    assert!(holds(c.clone(), &ctx1(keys::PRINCIPAL, s("alice"))));
    assert!(!holds(c.clone(), &ctx1(keys::PRINCIPAL, s("root"))));
    assert!(!holds(c.clone(), &ctx1(keys::PRINCIPAL, s("admin"))), "no value may match");
    assert!(holds(c.clone(), &Context::new()), "missing key: negated operator holds");
    assert!(!holds(c, &ctx1(keys::PRINCIPAL, ContextValue::Bool(false))), "wrong type fails");
    let c = json!({"string_not_equal_if_exist": {"vb:principal": "root"}});
    assert!(holds(c.clone(), &Context::new()));
    assert!(holds(c.clone(), &ctx1(keys::PRINCIPAL, s("bob"))));
    assert!(!holds(c, &ctx1(keys::PRINCIPAL, s("root"))));
}

#[test]
fn string_like_and_not_like() {
    let c = json!({"string_like": {"vb:session": ["s-*", "t-??"]}});
    assert!(holds(c.clone(), &ctx1(keys::SESSION, s("s-"))));
    assert!(holds(c.clone(), &ctx1(keys::SESSION, s("s-abc/def"))));
    assert!(holds(c.clone(), &ctx1(keys::SESSION, s("t-12"))));
    assert!(!holds(c.clone(), &ctx1(keys::SESSION, s("t-123"))));
    assert!(!holds(c.clone(), &ctx1(keys::SESSION, s("S-abc"))), "like is case-sensitive");
    assert!(!holds(c, &Context::new()));
    assert!(holds(json!({"string_like_if_exist": {"vb:session": "s-*"}}), &Context::new()));

    let c = json!({"string_not_like": {"vb:session": "tmp-*"}});
    assert!(holds(c.clone(), &ctx1(keys::SESSION, s("prod-1"))));
    assert!(!holds(c.clone(), &ctx1(keys::SESSION, s("tmp-1"))));
    assert!(holds(c, &Context::new()));
}

#[test]
fn string_equal_ignore_case() {
    let c = json!({"string_equal_ignore_case": {"vb:env": "APP"}});
    assert!(holds(c.clone(), &ctx1(keys::ENV, s("app"))));
    assert!(!holds(c, &ctx1(keys::ENV, s("apps"))));
    let c = json!({"string_not_equal_ignore_case": {"vb:env": "APP"}});
    assert!(!holds(c.clone(), &ctx1(keys::ENV, s("App"))));
    assert!(holds(c, &ctx1(keys::ENV, s("other"))));
}

// ---------------------------------------------------------------------------------------------
// IP operators
// ---------------------------------------------------------------------------------------------

#[test]
fn ip_equal_v4_and_v6_cidrs() {
    let c = json!({"ip_equal": {"vb:source_ip": ["10.0.0.0/8", "192.168.1.7", "2001:db8::/32", "::1/128"]}});
    for yes in
        ["10.0.0.1", "10.255.255.255", "192.168.1.7", "2001:db8::1", "2001:db8:ffff::9", "::1", "::ffff:10.9.9.9"]
    {
        assert!(holds(c.clone(), &ctx1(keys::SOURCE_IP, ip(yes))), "{yes}");
    }
    for no in ["11.0.0.1", "9.255.255.255", "192.168.1.8", "2001:db9::1", "::2", "fe80::1"] {
        assert!(!holds(c.clone(), &ctx1(keys::SOURCE_IP, ip(no))), "{no}");
    }
    assert!(!holds(c.clone(), &Context::new()));
    assert!(!holds(c, &ctx1(keys::SOURCE_IP, s("10.0.0.1"))), "a string is not an IP");

    let c = json!({"ip_equal_if_exist": {"vb:source_ip": "10.0.0.0/8"}});
    assert!(holds(c.clone(), &Context::new()));
    assert!(holds(c.clone(), &ctx1(keys::SOURCE_IP, ip("10.1.1.1"))));
    assert!(!holds(c, &ctx1(keys::SOURCE_IP, ip("8.8.8.8"))));

    // Host bits in the network and the catch-all prefixes.
    assert!(holds(json!({"ip_equal": {"vb:source_ip": "10.1.2.3/8"}}), &ctx1(keys::SOURCE_IP, ip("10.200.0.1"))));
    assert!(holds(json!({"ip_equal": {"vb:source_ip": "0.0.0.0/0"}}), &ctx1(keys::SOURCE_IP, ip("1.2.3.4"))));
    assert!(!holds(json!({"ip_equal": {"vb:source_ip": "0.0.0.0/0"}}), &ctx1(keys::SOURCE_IP, ip("::2"))));
    assert!(holds(json!({"ip_equal": {"vb:source_ip": "::/0"}}), &ctx1(keys::SOURCE_IP, ip("2001::5"))));
}

#[test]
fn ip_not_equal() {
    let c = json!({"ip_not_equal": {"vb:source_ip": ["10.0.0.0/8", "fd00::/8"]}});
    assert!(holds(c.clone(), &ctx1(keys::SOURCE_IP, ip("8.8.8.8"))));
    assert!(!holds(c.clone(), &ctx1(keys::SOURCE_IP, ip("10.3.3.3"))));
    assert!(!holds(c.clone(), &ctx1(keys::SOURCE_IP, ip("fd12::1"))));
    assert!(holds(c.clone(), &Context::new()), "missing key: negated operator holds");
    assert!(!holds(c, &ctx1(keys::SOURCE_IP, s("8.8.8.8"))), "wrong type fails");
    assert!(holds(json!({"ip_not_equal_if_exist": {"vb:source_ip": "10.0.0.0/8"}}), &Context::new()));
}

// ---------------------------------------------------------------------------------------------
// Date, bool and numeric operators
// ---------------------------------------------------------------------------------------------

#[test]
fn date_operators() {
    let before = json!({"date_less_than": {"vb:current_time": "2030-01-01T00:00:00Z"}});
    assert!(holds(before.clone(), &ctx1(keys::CURRENT_TIME, at("2029-12-31T23:59:59Z"))));
    assert!(!holds(before.clone(), &ctx1(keys::CURRENT_TIME, at("2030-01-01T00:00:00Z"))), "strict");
    // Offsets are honoured: 2030-01-01T00:30:00+01:00 is 2029-12-31T23:30:00Z.
    assert!(holds(before.clone(), &ctx1(keys::CURRENT_TIME, at("2030-01-01T00:30:00+01:00"))));
    assert!(!holds(before.clone(), &Context::new()));
    assert!(!holds(before, &ctx1(keys::CURRENT_TIME, s("2020-01-01T00:00:00Z"))), "wrong type");

    let after = json!({"date_greater_than": {"vb:current_time": "2024-06-01T12:00:00+02:00"}});
    assert!(holds(after.clone(), &ctx1(keys::CURRENT_TIME, at("2024-06-01T10:00:01Z"))));
    assert!(!holds(after.clone(), &ctx1(keys::CURRENT_TIME, at("2024-06-01T10:00:00Z"))));
    assert!(!holds(after, &Context::new()));

    let after_if = json!({"date_greater_than_if_exist": {"vb:current_time": "2024-01-01T00:00:00Z"}});
    assert!(holds(after_if.clone(), &Context::new()));
    assert!(!holds(after_if, &ctx1(keys::CURRENT_TIME, at("2023-01-01T00:00:00Z"))));
    let before_if = json!({"date_less_than_if_exist": {"vb:current_time": "2024-01-01T00:00:00Z"}});
    assert!(holds(before_if.clone(), &Context::new()));
    assert!(holds(before_if, &ctx1(keys::CURRENT_TIME, at("2023-01-01T00:00:00Z"))));

    let window = json!({
        "date_greater_than_equal": {"vb:current_time": "2024-01-01T00:00:00Z"},
        "date_less_than_equal": {"vb:current_time": "2024-12-31T23:59:59Z"},
    });
    assert!(holds(window.clone(), &ctx1(keys::CURRENT_TIME, at("2024-01-01T00:00:00Z"))));
    assert!(holds(window.clone(), &ctx1(keys::CURRENT_TIME, at("2024-12-31T23:59:59Z"))));
    assert!(!holds(window, &ctx1(keys::CURRENT_TIME, at("2025-01-01T00:00:00Z"))));
    let eq = json!({"date_equal": {"vb:current_time": "2024-01-01T01:00:00+01:00"}});
    assert!(holds(eq.clone(), &ctx1(keys::CURRENT_TIME, at("2024-01-01T00:00:00Z"))));
    let ne = json!({"date_not_equal": {"vb:current_time": "2024-01-01T01:00:00+01:00"}});
    assert!(!holds(ne, &ctx1(keys::CURRENT_TIME, at("2024-01-01T00:00:00Z"))));
}

#[test]
fn bool_equal() {
    let secure = ctx1(keys::SECURE_TRANSPORT, ContextValue::Bool(true));
    let plain = ctx1(keys::SECURE_TRANSPORT, ContextValue::Bool(false));
    for value in [json!(true), json!("true"), json!("TRUE")] {
        let c = json!({"bool_equal": {"vb:secure_transport": value}});
        assert!(holds(c.clone(), &secure));
        assert!(!holds(c.clone(), &plain));
        assert!(!holds(c.clone(), &Context::new()));
        assert!(!holds(c, &ctx1(keys::SECURE_TRANSPORT, s("true"))), "a string is not a bool");
    }
    let c = json!({"bool_equal": {"vb:secure_transport": "false"}});
    assert!(holds(c.clone(), &plain));
    assert!(!holds(c, &secure));
    let c = json!({"bool_equal_if_exist": {"vb:secure_transport": false}});
    assert!(holds(c.clone(), &Context::new()));
    assert!(!holds(c, &secure));
}

#[test]
fn numeric_operators() {
    let n = |v: f64| ctx1("app:count", ContextValue::Number(v));
    let eq = json!({"numeric_equal": {"app:count": [1, "2.5"]}});
    assert!(holds(eq.clone(), &n(1.0)));
    assert!(holds(eq.clone(), &n(2.5)));
    assert!(!holds(eq.clone(), &n(3.0)));
    assert!(!holds(eq.clone(), &Context::new()));
    assert!(!holds(eq, &ctx1("app:count", s("1"))), "wrong type");
    let ne = json!({"numeric_not_equal": {"app:count": 5}});
    assert!(holds(ne.clone(), &n(4.0)));
    assert!(!holds(ne.clone(), &n(5.0)));
    assert!(holds(ne, &Context::new()));
    let lt = json!({"numeric_less_than": {"app:count": 10}});
    assert!(holds(lt.clone(), &n(9.99)));
    assert!(!holds(lt.clone(), &n(10.0)));
    assert!(!holds(lt, &n(f64::NAN)), "NaN compares to nothing");
    assert!(holds(json!({"numeric_less_than_equal": {"app:count": 10}}), &n(10.0)));
    let gt = json!({"numeric_greater_than": {"app:count": -1.5}});
    assert!(holds(gt.clone(), &n(0.0)));
    assert!(!holds(gt, &n(-1.5)));
    assert!(holds(json!({"numeric_greater_than_equal": {"app:count": -1.5}}), &n(-1.5)));
    assert!(holds(json!({"numeric_greater_than_if_exist": {"app:count": 3}}), &Context::new()));
}

#[test]
fn all_keys_and_all_operators_must_hold() {
    let c = json!({
        "string_equal": {"vb:env": "app", "vb:principal": "alice"},
        "bool_equal": {"vb:secure_transport": true},
    });
    let full = Context::new()
        .with(keys::ENV, s("app"))
        .with(keys::PRINCIPAL, s("alice"))
        .with(keys::SECURE_TRANSPORT, ContextValue::Bool(true));
    assert!(holds(c.clone(), &full));
    assert!(!holds(c.clone(), &full.clone().with(keys::PRINCIPAL, s("bob"))));
    assert!(!holds(c.clone(), &full.clone().with(keys::SECURE_TRANSPORT, ContextValue::Bool(false))));
    let mut partial = Context::new();
    partial.insert(keys::ENV, s("app"));
    partial.insert(keys::SECURE_TRANSPORT, ContextValue::Bool(true));
    assert!(!holds(c, &partial));
}

#[test]
fn condition_and_context_keys_are_case_insensitive() {
    let c = json!({"string_equal": {"VB:Env": "app"}});
    assert!(holds(c.clone(), &ctx1("vb:env", s("app"))));
    assert!(holds(c, &ctx1("Vb:ENV", s("app"))));
    let ctx = ctx1("Vb:Env", s("x"));
    assert_eq!(ctx.get("vb:env"), Some(&s("x")));
    assert_eq!(ctx.get("VB:ENV"), Some(&s("x")));
    assert_eq!(ctx.get("vb:other"), None);
}

// ---------------------------------------------------------------------------------------------
// Actions, resources, effects
// ---------------------------------------------------------------------------------------------

#[test]
fn wildcard_and_case_insensitive_actions() {
    let p = one(json!({"effect": "allow", "action": ["db:*", "functions:Inv*", "storage:G?t"], "resource": "*"}));
    let none = Context::new();
    for yes in [
        "db:Query",
        "db:",
        "DB:query",
        "db:a:b",
        "functions:Invoke",
        "FUNCTIONS:INVOKE",
        "functions:Inv",
        "storage:Get",
        "storage:GET",
        "storage:gxt",
    ] {
        assert_eq!(decide(&p, yes, RES, &none), Decision::Allow, "{yes}");
    }
    for no in [
        "dbx:Query",
        "d:Query",
        "functions:Deploy",
        "functions:Inq",
        "storage:Gt",
        "storage:Gets",
        "Query",
        "",
        "xdb:Query",
    ] {
        assert_eq!(decide(&p, no, RES, &none), Decision::ImplicitDeny, "{no}");
    }
    let exact = one(json!({"effect": "allow", "action": "functions:INVOKE", "resource": "*"}));
    assert!(decide(&exact, "functions:invoke", RES, &none).is_allowed());
    assert!(!decide(&exact, "functions:invoked", RES, &none).is_allowed());
    let star = one(json!({"effect": "allow", "action": "*", "resource": "*"}));
    assert!(decide(&star, "anything:At all", RES, &none).is_allowed());
    assert!(decide(&star, "", RES, &none).is_allowed());
}

#[test]
fn wildcard_and_case_sensitive_resources() {
    let p = one(json!({
        "effect": "allow",
        "action": "*",
        "resource": ["vrn:vibebase:env/app/*", "vrn:vibebase:env/other/fn/f?"],
    }));
    let none = Context::new();
    for yes in [
        "vrn:vibebase:env/app/db/users",
        "vrn:vibebase:env/app/",
        "vrn:vibebase:env/app/a/b/c",
        "vrn:vibebase:env/other/fn/f1",
    ] {
        assert_eq!(decide(&p, "db:Query", yes, &none), Decision::Allow, "{yes}");
    }
    for no in [
        "vrn:vibebase:env/app",
        "vrn:vibebase:env/APP/db/users",
        "VRN:vibebase:env/app/db",
        "vrn:vibebase:env/app2/db",
        "vrn:vibebase:env/other/fn/f12",
        "vrn:vibebase:env/other/fn/f",
        "x vrn:vibebase:env/app/db",
    ] {
        assert_eq!(decide(&p, "db:Query", no, &none), Decision::ImplicitDeny, "{no}");
    }
    let all = one(json!({"effect": "allow", "action": "*", "resource": "vrn:vibebase:*"}));
    assert!(decide(&all, "db:Query", "vrn:vibebase:env/x/y/z", &none).is_allowed());
    assert!(!decide(&all, "db:Query", "vrn:other:env/x", &none).is_allowed());
}

#[test]
fn effects_and_combination() {
    let none = Context::new();
    let allow = one(json!({"effect": "Allow", "action": "db:*", "resource": "*"}));
    let deny = one(json!({"effect": "DENY", "action": "db:Drop*", "resource": "vrn:vibebase:env/app/*"}));
    assert_eq!(decide(&allow, "db:DropTable", RES, &none), Decision::Allow);
    assert_eq!(decide(&deny, "db:DropTable", RES, &none), Decision::ExplicitDeny);
    assert_eq!(decide(&deny, "db:Query", RES, &none), Decision::ImplicitDeny);
    assert_eq!(decide(&allow, "functions:Invoke", RES, &none), Decision::ImplicitDeny);
    assert!(!Decision::ExplicitDeny.is_allowed());
    assert!(!Decision::ImplicitDeny.is_allowed());
    assert!(Decision::Allow.is_allowed());

    let both = pol(json!({"version": "2.0", "statement": [
        {"effect": "deny", "action": "db:Drop*", "resource": "*"},
        {"effect": "allow", "action": "*", "resource": "*"},
    ]}));
    assert_eq!(decide(&both, "db:DropTable", RES, &none), Decision::ExplicitDeny);
    assert_eq!(decide(&both, "db:Query", RES, &none), Decision::Allow);

    let req = |action| AccessRequest { action, resource: RES, context: &none };
    let set = [allow.clone(), deny.clone()];
    assert_eq!(evaluate_all(&set, &req("db:DropTable")), Decision::ExplicitDeny);
    assert_eq!(evaluate_all(&[deny.clone(), allow.clone()], &req("db:DropTable")), Decision::ExplicitDeny);
    assert_eq!(evaluate_all(&set, &req("db:Query")), Decision::Allow);
    assert_eq!(evaluate_all(&set, &req("functions:Invoke")), Decision::ImplicitDeny);
    assert_eq!(evaluate_all(&[], &req("db:Query")), Decision::ImplicitDeny);
}

#[test]
fn a_deny_whose_condition_fails_does_not_apply() {
    let p = pol(json!({"version": "2.0", "statement": [
        {"effect": "allow", "action": "*", "resource": "*"},
        {"effect": "deny", "action": "*", "resource": "*",
         "condition": {"ip_not_equal": {"vb:source_ip": "10.0.0.0/8"}}},
    ]}));
    assert_eq!(decide(&p, "db:Query", RES, &ctx1(keys::SOURCE_IP, ip("10.0.0.5"))), Decision::Allow);
    assert_eq!(decide(&p, "db:Query", RES, &ctx1(keys::SOURCE_IP, ip("8.8.8.8"))), Decision::ExplicitDeny);
    // No source IP known: the negated operator holds, so the deny applies.
    assert_eq!(decide(&p, "db:Query", RES, &Context::new()), Decision::ExplicitDeny);
}

// ---------------------------------------------------------------------------------------------
// Environment resources
// ---------------------------------------------------------------------------------------------

#[test]
fn env_resource_names() {
    let app = env("my-app");
    assert_eq!(env_resource(&app), "vrn:vibebase:env/my-app");
    assert_eq!(env_child_resource(&app, "db", "users"), "vrn:vibebase:env/my-app/db/users");
}

#[test]
fn owner_of_env_covers_exactly_its_env() {
    let app = env("app");
    let p = owner_of_env(&app);
    let none = Context::new();
    assert!(decide(&p, "db:Query", "vrn:vibebase:env/app", &none).is_allowed());
    assert!(decide(&p, "anything:Goes", &env_child_resource(&app, "fn", "x"), &none).is_allowed());
    for other in [
        "vrn:vibebase:env/app2",
        "vrn:vibebase:env/app-x/db/t",
        "vrn:vibebase:env/ap",
        "vrn:vibebase:env/app2/db/t",
        "vrn:vibebase:env/appdb/t",
        "vrn:vibebase:env",
    ] {
        assert_eq!(decide(&p, "db:Query", other, &none), Decision::ImplicitDeny, "{other}");
    }
    assert_eq!(Policy::parse(&p.to_json()).unwrap(), p);
}

// ---------------------------------------------------------------------------------------------
// Grammar errors
// ---------------------------------------------------------------------------------------------

fn assert_err(e: &PolicyError, path_prefix: &str) {
    let msg = e.to_string();
    assert!(msg.starts_with(path_prefix), "message {msg:?} should start with {path_prefix:?}");
    assert!(e.code().starts_with("policy_"), "{}", e.code());
}

#[test]
fn wrong_version() {
    let stmt = json!({"effect": "allow", "action": "*", "resource": "*"});
    for version in [json!("1.0"), json!("2"), json!(2.0), json!(null), json!(" 2.0")] {
        let e = err(json!({"version": version, "statement": [stmt.clone()]}));
        assert!(matches!(e, PolicyError::UnsupportedVersion { .. }), "{e:?}");
        assert_err(&e, "version:");
        assert_eq!(e.code(), "policy_unsupported_version");
    }
    let e = err(json!({"statement": [stmt]}));
    assert!(matches!(e, PolicyError::MissingField { field: "version", .. }), "{e:?}");
}

#[test]
fn statement_list_shape() {
    let e = err(json!({"version": "2.0", "statement": []}));
    assert!(matches!(e, PolicyError::Empty { .. }), "{e:?}");
    assert_err(&e, "statement:");
    let e = err(json!({"version": "2.0", "statement": {"effect": "allow"}}));
    assert!(matches!(e, PolicyError::WrongType { .. }), "{e:?}");
    let e = err(json!({"version": "2.0"}));
    assert!(matches!(e, PolicyError::MissingField { field: "statement", .. }), "{e:?}");
    let e = err(json!({"version": "2.0", "statement": [7]}));
    assert_err(&e, "statement[0]:");
    for root in [json!(null), json!([]), json!("x"), json!(1)] {
        assert!(matches!(err(root), PolicyError::WrongType { .. }));
    }
    let stmt = json!({"effect": "allow", "action": "*", "resource": "*"});
    let e = err(json!({"version": "2.0", "statement": vec![stmt.clone(); 101]}));
    assert!(matches!(e, PolicyError::TooMany { max: 100, .. }), "{e:?}");
    assert_eq!(e.code(), "policy_too_large");
    assert!(Policy::parse(&json!({"version": "2.0", "statement": vec![stmt; 100]})).is_ok());
}

#[test]
fn bad_effect() {
    for effect in ["permit", "", "allowed", "denyy"] {
        let e = stmt_err(json!({"effect": effect, "action": "*", "resource": "*"}));
        assert!(matches!(e, PolicyError::BadEffect { .. }), "{e:?}");
        assert_err(&e, "statement[0].effect:");
    }
    let e = stmt_err(json!({"effect": true, "action": "*", "resource": "*"}));
    assert!(matches!(e, PolicyError::WrongType { .. }), "{e:?}");
    let e = stmt_err(json!({"action": "*", "resource": "*"}));
    assert!(matches!(e, PolicyError::MissingField { field: "effect", .. }), "{e:?}");
    assert_err(&e, "statement[0]:");
}

#[test]
fn unknown_fields() {
    let stmt = json!({"effect": "allow", "action": "*", "resource": "*"});
    let e = err(json!({"version": "2.0", "statement": [stmt.clone()], "id": "x"}));
    assert!(matches!(&e, PolicyError::UnknownField { field, .. } if field == "id"), "{e:?}");
    let e = err(
        json!({"version": "2.0", "statement": [stmt, {"effect": "allow", "action": "*", "resource": "*", "principal": "*"}]}),
    );
    assert!(matches!(&e, PolicyError::UnknownField { field, .. } if field == "principal"), "{e:?}");
    assert_err(&e, "statement[1]:");
    let e = stmt_err(json!({"Effect": "allow", "action": "*", "resource": "*"}));
    assert!(matches!(e, PolicyError::UnknownField { .. }), "{e:?}");
}

#[test]
fn bad_actions() {
    let e = stmt_err(json!({"effect": "allow", "action": ["db:*", "dbQuery"], "resource": "*"}));
    assert!(matches!(e, PolicyError::BadAction { .. }), "{e:?}");
    assert_err(&e, "statement[0].action[1]:");
    for bad in [
        "",
        "db:",
        ":Query",
        "DB:Query",
        "1db:Query",
        "db:Que-ry",
        "db:Query:More",
        "*:Query",
        "db :Query",
        "db:Qu ery",
        "**",
    ] {
        let e = stmt_err(json!({"effect": "allow", "action": bad, "resource": "*"}));
        assert!(matches!(e, PolicyError::BadAction { .. }), "{bad:?}: {e:?}");
        assert_err(&e, "statement[0].action:");
    }
    let e = stmt_err(json!({"effect": "allow", "action": 5, "resource": "*"}));
    assert!(matches!(e, PolicyError::WrongType { .. }), "{e:?}");
    assert_err(&e, "statement[0].action:");
    let e = stmt_err(json!({"effect": "allow", "action": ["db:*", 5], "resource": "*"}));
    assert!(matches!(e, PolicyError::WrongType { .. }), "{e:?}");
    assert_err(&e, "statement[0].action[1]:");
    let e = stmt_err(json!({"effect": "allow", "action": [], "resource": "*"}));
    assert!(matches!(e, PolicyError::Empty { .. }), "{e:?}");
    let e = stmt_err(json!({"effect": "allow", "action": vec!["db:*"; 101], "resource": "*"}));
    assert!(matches!(e, PolicyError::TooMany { .. }), "{e:?}");
    let e = stmt_err(json!({"effect": "allow", "resource": "*"}));
    assert!(matches!(e, PolicyError::MissingField { field: "action", .. }), "{e:?}");
    for good in ["*", "db:*", "my_svc-2:Do?t*", "functions:Invoke"] {
        assert!(
            Policy::parse(
                &json!({"version": "2.0", "statement": [{"effect": "allow", "action": good, "resource": "*"}]})
            )
            .is_ok(),
            "{good}"
        );
    }
}

#[test]
fn bad_resources() {
    for bad in ["", "env/app", "vrn:other:env/app", "VRN:vibebase:env/app", " vrn:vibebase:x", "vrn:vibebase:env/\napp"]
    {
        let e = stmt_err(json!({"effect": "allow", "action": "*", "resource": bad}));
        assert!(matches!(e, PolicyError::BadResource { .. }), "{bad:?}: {e:?}");
        assert_err(&e, "statement[0].resource:");
    }
    let long = format!("vrn:vibebase:{}", "a".repeat(1100));
    let e = stmt_err(json!({"effect": "allow", "action": "*", "resource": ["*", long]}));
    assert!(matches!(e, PolicyError::BadResource { .. }), "{e:?}");
    assert_err(&e, "statement[0].resource[1]:");
    assert!(e.to_string().len() < 300, "long inputs are clipped in messages");
    let e = stmt_err(json!({"effect": "allow", "action": "*", "resource": [true]}));
    assert!(matches!(e, PolicyError::WrongType { .. }), "{e:?}");
    let e = stmt_err(json!({"effect": "allow", "action": "*"}));
    assert!(matches!(e, PolicyError::MissingField { field: "resource", .. }), "{e:?}");
}

#[test]
fn bad_conditions() {
    let e = cond_err(json!({"string_equals": {"vb:env": "a"}}));
    assert!(matches!(e, PolicyError::UnknownOperator { .. }), "{e:?}");
    assert_eq!(e.code(), "policy_unknown_operator");
    assert_err(&e, "statement[0].condition:");
    assert!(matches!(cond_err(json!({"StringEquals": {"vb:env": "a"}})), PolicyError::UnknownOperator { .. }));
    assert!(matches!(
        cond_err(json!({"string_equal_if_exists": {"vb:env": "a"}})),
        PolicyError::UnknownOperator { .. }
    ));

    for bad_ip in ["10.0.0.300", "10.0.0.0/33", "::1/129", "not-an-ip", "10.0.0.0/", "", "10.0.0.1 "] {
        let e = cond_err(json!({"ip_equal": {"vb:source_ip": ["10.0.0.0/8", bad_ip]}}));
        assert!(matches!(e, PolicyError::BadConditionValue { .. }), "{bad_ip:?}: {e:?}");
        assert_err(&e, "statement[0].condition.ip_equal.vb:source_ip[1]:");
    }
    for bad_date in ["2024-13-01T00:00:00Z", "2024-01-01", "yesterday", "2024-01-01T00:00:00", "1700000000", ""] {
        let e = cond_err(json!({"date_less_than": {"vb:current_time": bad_date}}));
        assert!(matches!(e, PolicyError::BadConditionValue { .. }), "{bad_date:?}: {e:?}");
        assert_err(&e, "statement[0].condition.date_less_than.vb:current_time:");
    }
    let e = cond_err(json!({"date_greater_than_if_exist": {"vb:current_time": 1700000000}}));
    assert!(matches!(e, PolicyError::BadConditionValue { .. }), "{e:?}");
    for bad_bool in [json!("yes"), json!(1), json!(null), json!(["true", "maybe"])] {
        let e = cond_err(json!({"bool_equal": {"vb:secure_transport": bad_bool}}));
        assert!(matches!(e, PolicyError::BadConditionValue { .. }), "{e:?}");
    }
    for bad_num in [json!("ten"), json!("NaN"), json!("inf"), json!(true)] {
        let e = cond_err(json!({"numeric_less_than": {"app:n": bad_num}}));
        assert!(matches!(e, PolicyError::BadConditionValue { .. }), "{e:?}");
    }
    let e = cond_err(json!({"string_equal": {"vb:env": 5}}));
    assert!(matches!(e, PolicyError::BadConditionValue { .. }), "{e:?}");
    let e = cond_err(json!({"string_equal": {"vb:env": []}}));
    assert!(matches!(e, PolicyError::Empty { .. }), "{e:?}");
    let e = cond_err(json!({"string_equal": {}}));
    assert!(matches!(e, PolicyError::Empty { .. }), "{e:?}");
    let e = cond_err(json!({"string_equal": "vb:env"}));
    assert!(matches!(e, PolicyError::WrongType { .. }), "{e:?}");
    let e = cond_err(json!(["string_equal"]));
    assert!(matches!(e, PolicyError::WrongType { .. }), "{e:?}");
    // A platform key used with an operator of the wrong family.
    let e = cond_err(json!({"string_equal": {"vb:source_ip": "10.0.0.1"}}));
    assert!(matches!(e, PolicyError::BadConditionKey { .. }), "{e:?}");
    let e = cond_err(json!({"ip_equal": {"vb:env": "10.0.0.1"}}));
    assert!(matches!(e, PolicyError::BadConditionKey { .. }), "{e:?}");
    // Keys that collide once case is ignored, and malformed keys.
    let e = cond_err(json!({"string_equal": {"vb:env": "a", "VB:ENV": "b"}}));
    assert!(matches!(e, PolicyError::BadConditionKey { .. }), "{e:?}");
    for bad_key in ["", "vb env", "vb:env\n", "ключ"] {
        let e = cond_err(json!({"string_equal": {bad_key: "a"}}));
        assert!(matches!(e, PolicyError::BadConditionKey { .. }), "{bad_key:?}: {e:?}");
    }
}

#[test]
fn json_text_entry_points() {
    let text = r#"{"version":"2.0","statement":[{"effect":"allow","action":"db:*","resource":"*"}]}"#;
    let a = Policy::from_json_str(text).unwrap();
    let b: Policy = text.parse().unwrap();
    assert_eq!(a, b);
    let e = Policy::from_json_str("{\"version\":").unwrap_err();
    assert!(matches!(e, PolicyError::Json { .. }), "{e:?}");
    assert_eq!(e.code(), "policy_malformed_json");
    assert!("".parse::<Policy>().is_err());
    // serde integration goes through the same validation.
    let via_serde: Policy = serde_json::from_str(text).unwrap();
    assert_eq!(via_serde, a);
    assert_eq!(serde_json::to_value(&a).unwrap(), a.to_json());
    assert!(serde_json::from_str::<Policy>(r#"{"version":"1.0","statement":[]}"#).is_err());
}

#[test]
fn to_json_round_trips_a_rich_policy() {
    let p = pol(json!({"version": "2.0", "statement": [
        {"effect": "Allow", "action": "db:*", "resource": "vrn:vibebase:env/app/*",
         "condition": {
            "ip_equal": {"vb:source_ip": ["10.0.0.0/8", "::1/128"]},
            "date_less_than": {"vb:current_time": "2030-01-01T00:00:00+08:00"},
            "bool_equal_if_exist": {"vb:secure_transport": "true"},
            "numeric_less_than": {"app:n": "3.5"},
            "string_like": {"vb:session": "s-*", "VB:Principal": ["a", "b"]},
         }},
        {"effect": "deny", "action": ["functions:Del*", "db:Drop?"], "resource": ["*"]},
    ]}));
    let j = p.to_json();
    assert_eq!(Policy::parse(&j).unwrap(), p);
    assert_eq!(Policy::from_json_str(&j.to_string()).unwrap(), p);
    assert_eq!(p.to_string().parse::<Policy>().unwrap(), p);
    assert_eq!(j["statement"][0]["effect"], "allow");
    assert_eq!(j["statement"][0]["condition"]["string_like"]["vb:principal"], json!(["a", "b"]));
    assert_eq!(j["statement"][0]["condition"]["bool_equal_if_exist"]["vb:secure_transport"], json!([true]));
}

// ---------------------------------------------------------------------------------------------
// Property tests
// ---------------------------------------------------------------------------------------------

const ENVS: &[&str] = &["app", "app2", "app-x", "other"];

fn action_pattern() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "*",
            "db:*",
            "db:Query",
            "db:Q?ery",
            "functions:Invoke",
            "functions:Inv*",
            "storage:*",
            "storage:Put"
        ])
        .prop_map(str::to_owned),
        "(db|functions|storage):[A-Za-z*?]{1,6}",
    ]
}

fn request_action() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "db:Query",
            "db:query",
            "DB:QUERY",
            "functions:Invoke",
            "functions:invoke",
            "storage:Put",
            "admin:Delete"
        ])
        .prop_map(str::to_owned),
        "(db|functions|storage|admin):[A-Za-z]{1,6}",
    ]
}

fn resource_pattern() -> impl Strategy<Value = String> {
    let env = prop::sample::select(ENVS.to_vec());
    prop_oneof![
        Just("*".to_owned()),
        Just("vrn:vibebase:*".to_owned()),
        Just("vrn:vibebase:env/*/functions/f?".to_owned()),
        env.clone().prop_map(|e| format!("vrn:vibebase:env/{e}")),
        env.clone().prop_map(|e| format!("vrn:vibebase:env/{e}/*")),
        env.prop_map(|e| format!("vrn:vibebase:env/{e}/db/*")),
    ]
}

fn request_resource() -> impl Strategy<Value = String> {
    let env = prop::sample::select(ENVS.to_vec());
    prop_oneof![
        env.clone().prop_map(|e| format!("vrn:vibebase:env/{e}")),
        (env, prop::sample::select(vec!["db", "functions", "storage"]), "[a-z0-9]{1,3}")
            .prop_map(|(e, k, n)| format!("vrn:vibebase:env/{e}/{k}/{n}")),
    ]
}

fn condition_block() -> impl Strategy<Value = Value> {
    prop::sample::select(vec![
        json!({"string_equal": {"vb:env": ["app", "app2"]}}),
        json!({"string_not_equal_if_exist": {"vb:principal": "root"}}),
        json!({"string_not_equal": {"vb:principal": ["root", "bob"]}}),
        json!({"ip_equal": {"vb:source_ip": ["10.0.0.0/8", "::1/128"]}}),
        json!({"ip_not_equal": {"vb:source_ip": "192.168.0.0/16"}}),
        json!({"date_less_than": {"vb:current_time": "2030-01-01T00:00:00Z"}}),
        json!({"date_greater_than_if_exist": {"vb:current_time": "2025-01-01T00:00:00Z"}}),
        json!({"bool_equal": {"vb:secure_transport": true}}),
        json!({"string_like": {"vb:session": "s-*"}}),
        json!({"numeric_less_than_if_exist": {"app:n": 10}}),
        json!({"string_equal": {"vb:env": "app"}, "bool_equal_if_exist": {"vb:secure_transport": "false"}}),
    ])
}

fn statement(effect: impl Strategy<Value = &'static str>) -> impl Strategy<Value = Value> {
    (
        effect,
        prop::collection::vec(action_pattern(), 1..4),
        prop::collection::vec(resource_pattern(), 1..4),
        prop::option::of(condition_block()),
        any::<bool>(),
    )
        .prop_map(|(effect, actions, resources, condition, single)| {
            let mut obj = serde_json::Map::new();
            obj.insert("effect".into(), json!(effect));
            // Exercise both the string and the array form.
            let actions = if single && actions.len() == 1 { json!(actions[0]) } else { json!(actions) };
            obj.insert("action".into(), actions);
            obj.insert("resource".into(), json!(resources));
            if let Some(c) = condition {
                obj.insert("condition".into(), c);
            }
            Value::Object(obj)
        })
}

fn any_effect() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec!["allow", "deny", "Allow", "DENY"])
}

fn statements() -> impl Strategy<Value = Vec<Value>> {
    prop::collection::vec(statement(any_effect()), 1..7)
}

fn policy_value(statements: &[Value]) -> Value {
    json!({"version": "2.0", "statement": statements})
}

fn context() -> impl Strategy<Value = Context> {
    let env = prop::option::of(prop::sample::select(vec![s("app"), s("app2"), s("zzz"), ContextValue::Bool(true)]));
    let principal = prop::option::of(prop::sample::select(vec![s("root"), s("bob"), s("alice")]));
    let source = prop::option::of(prop::sample::select(vec![
        ip("10.1.2.3"),
        ip("192.168.4.5"),
        ip("::1"),
        ip("8.8.8.8"),
        s("10.1.2.3"),
    ]));
    let time = prop::option::of(prop::sample::select(vec![
        at("2024-01-01T00:00:00Z"),
        at("2026-05-05T05:05:05+05:00"),
        at("2031-01-01T00:00:00Z"),
    ]));
    let secure = prop::option::of(any::<bool>());
    let session = prop::option::of(prop::sample::select(vec![s("s-1"), s("t-1")]));
    let n = prop::option::of(prop::sample::select(vec![ContextValue::Number(3.0), ContextValue::Number(30.0), s("3")]));
    (env, principal, source, time, secure, session, n).prop_map(|(env, principal, source, time, secure, session, n)| {
        let mut c = Context::new();
        let pairs = [
            (keys::ENV, env),
            (keys::PRINCIPAL, principal),
            (keys::SOURCE_IP, source),
            (keys::CURRENT_TIME, time),
            (keys::SECURE_TRANSPORT, secure.map(ContextValue::Bool)),
            (keys::SESSION, session),
            ("app:n", n),
        ];
        for (k, v) in pairs {
            if let Some(v) = v {
                c.insert(k, v);
            }
        }
        c
    })
}

fn request() -> impl Strategy<Value = (String, String, Context)> {
    (request_action(), request_resource(), context())
}

fn eval(p: &Policy, (action, resource, context): &(String, String, Context)) -> Decision {
    decide(p, action, resource, context)
}

/// A deny statement built to match `request`.
fn matching_deny() -> impl Strategy<Value = (Value, (String, String, Context))> {
    (request(), 0..3usize, 0..3usize, 0..3usize).prop_map(|(req, a, r, c)| {
        let (action, resource, _) = &req;
        let lower = action.to_ascii_lowercase();
        let service = lower.split_once(':').map(|(svc, _)| svc).unwrap_or("db");
        let action_pat = [lower.clone(), "*".to_owned(), format!("{service}:*")][a].clone();
        // Cut inside the part after `vrn:vibebase:` so the prefix pattern stays valid.
        let cut = 13 + (resource.len() - 13) / 2;
        let resource_pat = [resource.clone(), "*".to_owned(), format!("{}*", &resource[..cut])][r].clone();
        let mut stmt = json!({"effect": "deny", "action": [action_pat], "resource": resource_pat});
        match c {
            1 => stmt["condition"] = json!({"string_equal_if_exist": {"app:absent": "x"}}),
            2 => stmt["condition"] = json!({"string_not_equal": {"app:absent": ["x", "y"]}}),
            _ => {}
        }
        (stmt, req)
    })
}

fn env_id() -> impl Strategy<Value = String> {
    "[a-z]([a-z0-9]|-[a-z0-9]){0,8}"
}

/// Distinct env ids, often one a prefix of the other.
fn env_pair() -> impl Strategy<Value = (String, String)> {
    let suffix = prop::sample::select(vec!["2", "-x", "x", "-2a", "0", "-app", "a"]);
    prop_oneof![
        (env_id(), env_id()),
        (env_id(), suffix.clone()).prop_map(|(a, s)| (a.clone(), format!("{a}{s}"))),
        (env_id(), suffix).prop_map(|(a, s)| (format!("{a}{s}"), a)),
    ]
    .prop_filter("distinct valid ids", |(a, b)| a != b && EnvId::parse(a).is_ok() && EnvId::parse(b).is_ok())
}

/// Kind or name segments, including path tricks and wildcard characters.
fn segment(other: String) -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9/*?.-]{0,12}",
        Just("..".to_owned()),
        Just("*".to_owned()),
        Just(format!("../{other}")),
        Just(format!("../../{other}/x")),
        Just(format!("/{other}/*")),
        ".{0,8}",
    ]
}

fn arbitrary_json() -> impl Strategy<Value = Value> {
    let words = prop::sample::select(vec![
        "version",
        "statement",
        "effect",
        "action",
        "resource",
        "condition",
        "2.0",
        "allow",
        "deny",
        "*",
        "db:*",
        "vrn:vibebase:env/a/*",
        "string_equal",
        "ip_equal",
        "date_less_than_if_exist",
        "bool_equal",
        "numeric_equal",
        "vb:source_ip",
        "vb:env",
        "10.0.0.0/8",
        "2030-01-01T00:00:00Z",
        "true",
        "",
        "x",
    ]);
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        words.clone().prop_map(Value::from),
        ".{0,10}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((words.clone(), inner), 0..6)
                .prop_map(|kv| Value::Object(kv.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())),
        ]
    })
}

/// A policy whose statements mix valid parts with arbitrary values.
fn near_policy() -> impl Strategy<Value = Value> {
    let field = |valid: BoxedStrategy<Value>| prop_oneof![3 => valid, 1 => arbitrary_json()];
    let stmt = (
        field(any_effect().prop_map(Value::from).boxed()),
        field(prop::collection::vec(action_pattern(), 1..3).prop_map(|v| json!(v)).boxed()),
        field(prop::collection::vec(resource_pattern(), 1..3).prop_map(|v| json!(v)).boxed()),
        field(condition_block().boxed()),
    )
        .prop_map(|(e, a, r, c)| json!({"effect": e, "action": a, "resource": r, "condition": c}));
    (prop::collection::vec(stmt, 1..4), prop::sample::select(vec![json!("2.0"), json!("2.1"), json!(2)]))
        .prop_map(|(statements, version)| json!({"version": version, "statement": statements}))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn deny_beats_allow(
        allows in prop::collection::vec(statement(Just("allow")), 1..4),
        (deny, req) in matching_deny(),
    ) {
        let deny_only = pol(policy_value(std::slice::from_ref(&deny)));
        prop_assert_eq!(eval(&deny_only, &req), Decision::ExplicitDeny);

        let mut first = allows.clone();
        first.push(deny.clone());
        let mut last = vec![deny];
        last.extend(allows.iter().cloned());
        prop_assert_eq!(eval(&pol(policy_value(&first)), &req), Decision::ExplicitDeny);
        prop_assert_eq!(eval(&pol(policy_value(&last)), &req), Decision::ExplicitDeny);

        // Across policies attached to one principal, too.
        let allow_policy = pol(policy_value(&allows));
        let (action, resource, context) = &req;
        let request = AccessRequest { action, resource, context };
        prop_assert_eq!(evaluate_all(&[allow_policy.clone(), deny_only.clone()], &request), Decision::ExplicitDeny);
        prop_assert_eq!(evaluate_all(&[deny_only, allow_policy], &request), Decision::ExplicitDeny);
    }

    #[test]
    fn statement_order_does_not_matter(
        (original, shuffled) in statements().prop_flat_map(|s| (Just(s.clone()), Just(s).prop_shuffle())),
        requests in prop::collection::vec(request(), 1..8),
    ) {
        let p = pol(policy_value(&original));
        let mut reversed = original.clone();
        reversed.reverse();
        let r = pol(policy_value(&reversed));
        let q = pol(policy_value(&shuffled));
        let split: Vec<Policy> = original.iter().map(|s| pol(policy_value(std::slice::from_ref(s)))).collect();
        let mut split_rev = split.clone();
        split_rev.reverse();
        for req in &requests {
            let d = eval(&p, req);
            prop_assert_eq!(eval(&r, req), d);
            prop_assert_eq!(eval(&q, req), d);
            let (action, resource, context) = req;
            let request = AccessRequest { action, resource, context };
            prop_assert_eq!(evaluate_all(&split, &request), d);
            prop_assert_eq!(evaluate_all(&split_rev, &request), d);
        }
    }

    #[test]
    fn owner_of_env_never_reaches_another_env(
        ((a, b), kind, name) in env_pair().prop_flat_map(|(a, b)| {
            let a2 = a.clone();
            (Just((a, b)), segment(a2.clone()), segment(a2))
        }),
        actions in prop::collection::vec(prop_oneof![request_action(), ".{0,12}"], 1..4),
    ) {
        let env_a = env(&a);
        let env_b = env(&b);
        let owner = owner_of_env(&env_a);
        let reparsed = Policy::parse(&owner.to_json()).unwrap();
        let none = Context::new();
        for action in &actions {
            for p in [&owner, &reparsed] {
                prop_assert_ne!(decide(p, action, &env_resource(&env_b), &none), Decision::Allow);
                let child = env_child_resource(&env_b, &kind, &name);
                prop_assert_ne!(decide(p, action, &child, &none), Decision::Allow, "{} reached {}", a, child);
                prop_assert_eq!(decide(p, action, &env_resource(&env_a), &none), Decision::Allow);
                prop_assert_eq!(decide(p, action, &env_child_resource(&env_a, &kind, &name), &none), Decision::Allow);
            }
        }
    }

    #[test]
    fn parse_never_panics_on_arbitrary_json(v in prop_oneof![arbitrary_json(), near_policy()]) {
        if let Ok(p) = Policy::parse(&v) {
            prop_assert_eq!(Policy::parse(&p.to_json()).unwrap(), p);
        }
        if let Err(e) = Policy::parse(&v) {
            prop_assert!(e.code().starts_with("policy_"));
            prop_assert!(!e.to_string().is_empty());
        }
        let _ = Policy::from_json_str(&v.to_string());
    }

    #[test]
    fn parse_never_panics_on_arbitrary_text(text in ".{0,64}") {
        let _ = Policy::from_json_str(&text);
    }

    #[test]
    fn to_json_round_trips(stmts in statements(), requests in prop::collection::vec(request(), 1..8)) {
        let p = pol(policy_value(&stmts));
        let j = p.to_json();
        let q = Policy::parse(&j).unwrap();
        prop_assert_eq!(&q, &p);
        let r = Policy::from_json_str(&j.to_string()).unwrap();
        prop_assert_eq!(&r, &p);
        prop_assert_eq!(q.to_json(), j);
        for req in &requests {
            let d = eval(&p, req);
            prop_assert_eq!(eval(&q, req), d);
            prop_assert_eq!(eval(&r, req), d);
        }
    }
}
