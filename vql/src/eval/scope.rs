//! Scopes: a stack of frames searched newest first (rows, LET bindings, lazy columns),
//! sharing one query context, with an aggregate state per aggregate context.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use indexmap::IndexMap;

use crate::eval::engine::Context;
use crate::eval::value::{Row, Value};
use crate::syntax::ast::{LetValue, Param, Select};

/// What a LET name is bound to.
#[derive(Clone)]
pub enum Binding {
    /// A value (parameters, `LET X <= expr`).
    Value(Value),
    /// `LET X = expr`: re-evaluated at each reference.
    Expr(crate::syntax::ast::Expr),
    /// `LET X = SELECT ...`: a lazy query, re-run at each use.
    Query(Arc<Select>),
    /// `LET F(a, b=1) = ...`: a function or parameterised query.
    Func { params: Vec<Param>, body: LetValue },
}

/// Lazily computed columns of the row being filtered, so WHERE can use aliases.
pub struct LazyColumns {
    pub select: Arc<Select>,
    /// The scope columns are computed in: the query's scope plus the source row.
    pub base: Scope,
    /// Column index by output name.
    pub by_name: Arc<HashMap<String, usize>>,
    pub values: Mutex<Vec<Option<Value>>>,
}

/// One frame of a scope.
pub enum Frame {
    Empty,
    Row(Arc<Row>),
    Vars(Mutex<IndexMap<String, Binding>>),
    Lazy(Arc<LazyColumns>),
    /// The columns of a SELECT before column N, as that column sees them
    /// (`SELECT 1 AS X, X + 1 AS Y`).
    Earlier(Arc<LazyColumns>, usize),
}

/// Aggregate state per call site (the span start of the call).
pub type AggState = Arc<Mutex<HashMap<usize, Value>>>;

struct Node {
    frame: Frame,
    parent: Option<Scope>,
    ctx: Arc<Context>,
    agg: AggState,
    depth: usize,
}

/// A scope: cheap to clone.
#[derive(Clone)]
pub struct Scope {
    node: Arc<Node>,
}

impl Scope {
    /// A root scope with a variables frame.
    pub fn root(ctx: Arc<Context>) -> Scope {
        Scope {
            node: Arc::new(Node {
                frame: Frame::Vars(Mutex::new(IndexMap::new())),
                parent: None,
                ctx,
                agg: AggState::default(),
                depth: 0,
            }),
        }
    }

    /// The query context.
    pub fn ctx(&self) -> &Arc<Context> {
        &self.node.ctx
    }

    /// Nesting depth.
    pub fn depth(&self) -> usize {
        self.node.depth
    }

    /// The aggregate state in force.
    pub fn agg(&self) -> &AggState {
        &self.node.agg
    }

    /// A child scope with a frame on top.
    pub fn push(&self, frame: Frame) -> Scope {
        Scope {
            node: Arc::new(Node {
                frame,
                parent: Some(self.clone()),
                ctx: self.node.ctx.clone(),
                agg: self.node.agg.clone(),
                depth: self.node.depth + 1,
            }),
        }
    }

    /// A child scope for evaluating a LET expression or function body. It weighs
    /// [`crate::eval::engine::CALL_WEIGHT`] levels, so runaway recursion stops well before the
    /// thread's stack does.
    pub fn push_call(&self, frame: Frame) -> Scope {
        let child = self.push(frame);
        Scope {
            node: Arc::new(Node {
                frame: Frame::Empty,
                parent: Some(child.clone()),
                ctx: self.node.ctx.clone(),
                agg: self.node.agg.clone(),
                depth: self.node.depth + crate::eval::engine::CALL_WEIGHT,
            }),
        }
    }

    /// A child scope with a fresh aggregate context.
    pub fn with_new_agg(&self) -> Scope {
        self.with_agg(AggState::default())
    }

    /// A child scope using the given aggregate context.
    pub fn with_agg(&self, agg: AggState) -> Scope {
        Scope {
            node: Arc::new(Node {
                frame: Frame::Empty,
                parent: Some(self.clone()),
                ctx: self.node.ctx.clone(),
                agg,
                depth: self.node.depth + 1,
            }),
        }
    }

    /// A child scope binding variables.
    pub fn with_vars(&self, vars: IndexMap<String, Binding>) -> Scope {
        self.push(Frame::Vars(Mutex::new(vars)))
    }

    /// Binds a name in the nearest variables frame (LET).
    pub fn set(&self, name: &str, b: Binding) {
        let mut s = Some(self);
        while let Some(scope) = s {
            if let Frame::Vars(vars) = &scope.node.frame {
                vars.lock().expect("vars lock").insert(name.to_string(), b);
                return;
            }
            s = scope.node.parent.as_ref();
        }
    }

    /// What a name resolves to, newest frame first (not evaluated).
    pub fn find(&self, name: &str) -> Option<Found> {
        let mut s = Some(self);
        while let Some(scope) = s {
            match &scope.node.frame {
                Frame::Row(r) => {
                    if let Some(v) = r.get(name) {
                        return Some(Found::Value(v.clone()));
                    }
                }
                Frame::Vars(vars) => {
                    if let Some(b) = vars.lock().expect("vars lock").get(name) {
                        return Some(Found::Binding(b.clone()));
                    }
                }
                Frame::Lazy(cols) => {
                    if let Some(i) = cols.by_name.get(name) {
                        return Some(Found::Column(cols.clone(), *i, scope.clone()));
                    }
                }
                Frame::Earlier(cols, n) => {
                    if let Some(i) = cols.by_name.get(name).filter(|i| **i < *n) {
                        return Some(Found::Column(cols.clone(), *i, scope.clone()));
                    }
                }
                Frame::Empty => {}
            }
            s = scope.node.parent.as_ref();
        }
        None
    }

    /// Every plain row value visible, merged oldest first (the `scope()` function).
    pub fn snapshot(&self) -> Row {
        let mut frames = Vec::new();
        let mut s = Some(self);
        while let Some(scope) = s {
            frames.push(scope);
            s = scope.node.parent.as_ref();
        }
        let mut out = Row::new();
        for scope in frames.into_iter().rev() {
            match &scope.node.frame {
                Frame::Row(r) => out.extend(r.iter().map(|(k, v)| (k.clone(), v.clone()))),
                Frame::Vars(vars) => {
                    for (k, b) in vars.lock().expect("vars lock").iter() {
                        if let Binding::Value(v) = b {
                            out.insert(k.clone(), v.clone());
                        }
                    }
                }
                _ => {}
            }
        }
        out
    }
}

/// The result of a name lookup.
pub enum Found {
    Value(Value),
    Binding(Binding),
    /// A lazy column: computed on first use in the scope that holds it.
    Column(Arc<LazyColumns>, usize, Scope),
}
