//! Expression evaluation: symbols and LET bindings, calls of built-in and LET functions,
//! operators with VQL's short-circuit and NULL rules.

use std::collections::HashMap;
use std::sync::Arc;

use futures::future::BoxFuture;
use futures::StreamExt;
use indexmap::IndexMap;

use crate::eval::engine::MAX_DEPTH;
use crate::eval::registry::{ArgSrc, Args, Call};
use crate::eval::scope::{Binding, Found, Scope};
use crate::eval::value::{self, StoredQuery, Value};
use crate::syntax::ast::*;

/// Evaluates an expression in a scope.
pub fn eval<'a>(e: &'a Expr, scope: &'a Scope) -> BoxFuture<'a, Value> {
    Box::pin(async move {
        if scope.depth() > MAX_DEPTH {
            return Value::Null;
        }
        match &e.kind {
            ExprKind::Null => Value::Null,
            ExprKind::Bool(b) => Value::Bool(*b),
            ExprKind::Int(i) => Value::Int(*i),
            ExprKind::Float(f) => Value::Float(*f),
            ExprKind::Str(b) => Value::from_bytes(b.clone()),
            ExprKind::List(items) => {
                let mut out = Vec::with_capacity(items.len());
                for i in items {
                    out.push(eval(i, scope).await);
                }
                Value::List(out)
            }
            ExprKind::Paren(inner) => eval(inner, scope).await,
            ExprKind::Symbol {
                negated,
                path,
                call,
            } => {
                let v = match call {
                    None => {
                        let mut v = lookup(&path[0], scope).await;
                        if path.len() > 1 {
                            v = materialize(v, scope).await;
                        }
                        for p in &path[1..] {
                            v = value::member(&v, p);
                        }
                        v
                    }
                    Some(args) => call_named(&path.join("."), args, scope, e.span.start).await,
                };
                if *negated {
                    negate(&v)
                } else {
                    v
                }
            }
            ExprKind::Member(lhs, name) => {
                value::member(&materialize(eval(lhs, scope).await, scope).await, name)
            }
            ExprKind::Index(lhs, i) => match i {
                Some(i) => {
                    let v = materialize(eval(lhs, scope).await, scope).await;
                    value::index(&v, &eval(i, scope).await)
                }
                None => Value::Null,
            },
            ExprKind::Slice(lhs, a, b) => {
                let v = eval(lhs, scope).await;
                let a = match a {
                    Some(a) => Some(eval(a, scope).await),
                    None => None,
                };
                let b = match b {
                    Some(b) => Some(eval(b, scope).await),
                    None => None,
                };
                value::slice(&v, a.as_ref(), b.as_ref())
            }
            ExprKind::Not(inner) => Value::Bool(!truthy(&eval(inner, scope).await, scope).await),
            ExprKind::Binary(op, l, r) => binary(*op, l, r, scope).await,
        }
    })
}

/// Evaluates literals and plain names without an async call; None when the expression
/// needs the full evaluator. A fast path for the common leaves of WHERE clauses.
pub fn eval_sync(e: &Expr, scope: &Scope) -> Option<Value> {
    match &e.kind {
        ExprKind::Null => Some(Value::Null),
        ExprKind::Bool(b) => Some(Value::Bool(*b)),
        ExprKind::Int(i) => Some(Value::Int(*i)),
        ExprKind::Float(f) => Some(Value::Float(*f)),
        ExprKind::Str(b) => Some(Value::from_bytes(b.clone())),
        ExprKind::Symbol {
            negated: false,
            path,
            call: None,
        } if path.len() == 1 => match scope.find(&path[0])? {
            Found::Value(v) | Found::Binding(Binding::Value(v)) => match v {
                Value::Query(StoredQuery::Lazy { .. }) => None,
                v => Some(v),
            },
            _ => None,
        },
        _ => None,
    }
}

/// [`eval`], taking the synchronous fast path when it can.
pub async fn eval_fast(e: &Expr, scope: &Scope) -> Value {
    match eval_sync(e, scope) {
        Some(v) => v,
        None => eval(e, scope).await,
    }
}

fn negate(v: &Value) -> Value {
    match v {
        Value::Int(i) => Value::Int(i.wrapping_neg()),
        Value::Float(f) => Value::Float(-f),
        _ => Value::Null,
    }
}

/// Truthiness, running a lazy stored query to see whether it yields a row.
pub async fn truthy(v: &Value, scope: &Scope) -> bool {
    match v {
        Value::Query(StoredQuery::Lazy { .. }) => {
            let mut rows = crate::eval::query::query_rows(v.clone(), scope.clone());
            rows.next().await.is_some()
        }
        other => other.truthy(),
    }
}

async fn binary(op: BinOp, l: &Expr, r: &Expr, scope: &Scope) -> Value {
    match op {
        BinOp::And => {
            if !truthy(&eval_fast(l, scope).await, scope).await {
                return Value::Bool(false);
            }
            Value::Bool(truthy(&eval_fast(r, scope).await, scope).await)
        }
        BinOp::Or => {
            let a = eval_fast(l, scope).await;
            if truthy(&a, scope).await {
                return a;
            }
            eval_fast(r, scope).await
        }
        BinOp::AltOr => {
            let a = eval_fast(l, scope).await;
            if truthy(&a, scope).await {
                return a;
            }
            eval_fast(r, scope).await
        }
        BinOp::AltAnd => {
            let a = eval_fast(l, scope).await;
            if !truthy(&a, scope).await {
                return Value::Bool(false);
            }
            eval_fast(r, scope).await
        }
        _ => {
            let a = materialize(eval_fast(l, scope).await, scope).await;
            let b = materialize(eval_fast(r, scope).await, scope).await;
            match op {
                BinOp::Eq => Value::Bool(value::equal(&a, &b)),
                BinOp::Ne => Value::Bool(!value::equal(&a, &b)),
                BinOp::Lt => Value::Bool(value::less(&a, &b)),
                BinOp::Gt => Value::Bool(value::less(&b, &a)),
                BinOp::Le => Value::Bool(value::less(&a, &b) || value::equal(&a, &b)),
                BinOp::Ge => Value::Bool(value::less(&b, &a) || value::equal(&a, &b)),
                BinOp::In => Value::Bool(value::contains(&a, &b)),
                BinOp::Regex => Value::Bool(regex_match(&a, &b, scope)),
                BinOp::Add => value::add(&a, &b),
                BinOp::Sub => value::sub(&a, &b),
                BinOp::Mul => value::mul(&a, &b),
                BinOp::Div => value::div(&a, &b),
                BinOp::And | BinOp::Or | BinOp::AltAnd | BinOp::AltOr => unreachable!(),
            }
        }
    }
}

fn regex_match(a: &Value, pattern: &Value, scope: &Scope) -> bool {
    let Value::Str(p) = pattern else {
        return false;
    };
    if a.is_null() {
        return matches!(p.as_str(), "." | ".*" | "");
    }
    if let Value::List(items) = a {
        return items.iter().any(|i| regex_match(i, pattern, scope));
    }
    let Some(subject) = value::regex_subject(a) else {
        return false;
    };
    match scope.ctx().regex(p) {
        Some(re) => re.is_match(&subject),
        None => false,
    }
}

/// A lazy stored query turned into its rows; other values unchanged.
pub async fn materialize(v: Value, scope: &Scope) -> Value {
    match v {
        Value::Query(StoredQuery::Lazy { .. }) => {
            let rows: Vec<_> = crate::eval::query::query_rows(v, scope.clone())
                .collect()
                .await;
            Value::Query(StoredQuery::Rows(Arc::new(rows)))
        }
        other => other,
    }
}

/// Like [`materialize`], but down into lists and dicts, giving plain data (for output).
pub fn materialize_deep<'a>(v: Value, scope: &'a Scope) -> BoxFuture<'a, Value> {
    Box::pin(async move {
        match v {
            Value::Query(_) => match materialize(v, scope).await {
                Value::Query(StoredQuery::Rows(rows)) => {
                    Value::List(rows.iter().map(|r| Value::Dict(r.clone())).collect())
                }
                other => other,
            },
            Value::List(items) => {
                let mut out = Vec::with_capacity(items.len());
                for i in items {
                    out.push(materialize_deep(i, scope).await);
                }
                Value::List(out)
            }
            Value::Dict(d) => {
                let mut out = IndexMap::with_capacity(d.len());
                for (k, v) in d {
                    out.insert(k, materialize_deep(v, scope).await);
                }
                Value::Dict(out)
            }
            other => other,
        }
    })
}

/// Resolves a name: rows, LET bindings, lazy columns; NULL (and a log line) when unknown.
pub fn lookup<'a>(name: &'a str, scope: &'a Scope) -> BoxFuture<'a, Value> {
    Box::pin(async move {
        match scope.find(name) {
            Some(Found::Value(v)) => v,
            Some(Found::Binding(b)) => binding_value(name, b, scope).await,
            Some(Found::Column(cols, i, at)) => {
                crate::eval::query::lazy_column(&cols, i, &at).await
            }
            None => {
                scope.ctx().symbol_not_found(name);
                Value::Null
            }
        }
    })
}

async fn binding_value(name: &str, b: Binding, scope: &Scope) -> Value {
    match b {
        Binding::Value(v) => v,
        Binding::Expr(e) => {
            let child = scope.push_call(crate::eval::scope::Frame::Empty);
            eval(&e, &child).await
        }
        Binding::Query(select) => Value::Query(StoredQuery::Lazy {
            select,
            scope: scope.clone(),
        }),
        Binding::Func { .. } => {
            scope.ctx().log(
                "ERROR",
                format!("{name} is a function: call it with parentheses, {name}()"),
            );
            Value::Null
        }
    }
}

/// Evaluates an argument value in the caller's scope.
pub(crate) fn arg_value<'a>(src: &'a ArgSrc<'_>, scope: &'a Scope) -> BoxFuture<'a, Value> {
    Box::pin(async move {
        match src {
            ArgSrc::Value(v) => v.clone(),
            ArgSrc::Ast(ArgValue::Expr(e)) => eval(e, scope).await,
            ArgSrc::Ast(ArgValue::List(items)) => {
                let mut out = Vec::with_capacity(items.len());
                for i in items {
                    out.push(eval(i, scope).await);
                }
                Value::List(out)
            }
            ArgSrc::Ast(ArgValue::Query(select)) => Value::Query(StoredQuery::Lazy {
                select: select.clone(),
                scope: scope.clone(),
            }),
        }
    })
}

/// Calls `name(args)`: a built-in function first (LET names never hide one), then a LET
/// function or parameterised query.
async fn call_named(name: &str, args: &[Arg], scope: &Scope, site: usize) -> Value {
    let ctx = scope.ctx().clone();
    if let Some(f) = ctx.engine.get_function(name) {
        if let Some(p) = crate::builtins::permissions::required(name, false) {
            if !ctx.allowed(p, &format!("{name}()")) {
                return Value::Null;
            }
        }
        let call = Call {
            name,
            args: Args {
                items: args
                    .iter()
                    .map(|a| (a.name.clone(), ArgSrc::Ast(&a.value)))
                    .collect(),
                scope,
                cache: HashMap::new(),
                expanded: false,
            },
            scope,
            site,
        };
        return (f.imp)(call).await;
    }
    match scope.find(name) {
        Some(Found::Binding(Binding::Func { params, body })) => {
            let child = bind_params(&params, args, scope).await.with_new_agg();
            match body {
                LetValue::Expr(e) => eval(&e, &child).await,
                LetValue::Query(select) => Value::Query(StoredQuery::Lazy {
                    select,
                    scope: child,
                }),
            }
        }
        Some(Found::Binding(Binding::Expr(e))) => {
            // Calling a LET expression: the arguments shadow names while it is evaluated.
            let child = bind_params(&[], args, scope).await.with_new_agg();
            eval(&e, &child).await
        }
        Some(Found::Binding(Binding::Query(select))) => {
            // A stored query called with arguments: they shadow names for its run.
            let child = bind_params(&[], args, scope).await;
            Value::Query(StoredQuery::Lazy {
                select,
                scope: child,
            })
        }
        _ => {
            if ctx.engine.get_plugin(name).is_some() {
                ctx.log("ERROR", format!("{name} is a plugin: use it after FROM"));
            } else {
                ctx.log("ERROR", format!("Unknown function {name}"));
            }
            Value::Null
        }
    }
}

/// A child scope with the call's arguments (evaluated eagerly in the caller's scope) and
/// the defaults of parameters not given.
pub async fn bind_params(params: &[Param], args: &[Arg], scope: &Scope) -> Scope {
    if scope.depth() > MAX_DEPTH {
        return scope.clone();
    }
    let mut vars = IndexMap::new();
    for a in args {
        let v = arg_value(&ArgSrc::Ast(&a.value), scope).await;
        vars.insert(a.name.clone(), Binding::Value(v));
    }
    for p in params {
        if vars.contains_key(&p.name) {
            continue;
        }
        if let Some(d) = &p.default {
            let v = arg_value(&ArgSrc::Ast(d), scope).await;
            vars.insert(p.name.clone(), Binding::Value(v));
        }
    }
    scope.push_call(crate::eval::scope::Frame::Vars(std::sync::Mutex::new(vars)))
}
