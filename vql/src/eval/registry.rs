//! The registry of functions and plugins, each declaring where it may run, and the call
//! types they receive.

use std::collections::HashMap;

use futures::future::BoxFuture;
use futures::stream::BoxStream;

use crate::eval::engine::Place;
use crate::eval::scope::Scope;
use crate::eval::value::{Row, Value};
use crate::syntax::ast::ArgValue;

/// A function's implementation.
pub type FnImpl = for<'a> fn(Call<'a>) -> BoxFuture<'a, Value>;
/// A plugin's implementation.
pub type PluginImpl = fn(PluginCall) -> BoxStream<'static, Row>;

/// A registered function.
pub struct FunctionDef {
    pub name: &'static str,
    pub imp: FnImpl,
    pub place: Place,
}

/// A registered plugin.
pub struct PluginDef {
    pub name: &'static str,
    pub imp: PluginImpl,
    pub place: Place,
    /// Never ends until cancelled.
    pub event: bool,
}

/// Functions and plugins by name.
#[derive(Default)]
pub struct Registry {
    functions: HashMap<&'static str, FunctionDef>,
    plugins: HashMap<&'static str, PluginDef>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a function.
    pub fn function(&mut self, name: &'static str, place: Place, imp: FnImpl) {
        self.functions
            .insert(name, FunctionDef { name, imp, place });
    }

    /// Adds a plugin.
    pub fn plugin(&mut self, name: &'static str, place: Place, event: bool, imp: PluginImpl) {
        self.plugins.insert(
            name,
            PluginDef {
                name,
                imp,
                place,
                event,
            },
        );
    }

    /// A function by name.
    pub fn get_function(&self, name: &str) -> Option<&FunctionDef> {
        self.functions.get(name)
    }

    /// A plugin by name.
    pub fn get_plugin(&self, name: &str) -> Option<&PluginDef> {
        self.plugins.get(name)
    }

    /// Names of every function, sorted.
    pub fn function_names(&self) -> Vec<&'static str> {
        let mut v: Vec<_> = self.functions.keys().copied().collect();
        v.sort();
        v
    }

    /// Names of every plugin, sorted.
    pub fn plugin_names(&self) -> Vec<&'static str> {
        let mut v: Vec<_> = self.plugins.keys().copied().collect();
        v.sort();
        v
    }
}

/// Where an argument's value comes from.
pub(crate) enum ArgSrc<'a> {
    Ast(&'a ArgValue),
    Value(Value),
}

/// A function's arguments: evaluated lazily, at most once, in the caller's scope.
pub struct Args<'a> {
    pub(crate) items: Vec<(String, ArgSrc<'a>)>,
    pub(crate) scope: &'a Scope,
    pub(crate) cache: HashMap<String, Value>,
    pub(crate) expanded: bool,
}

impl<'a> Args<'a> {
    /// Names given, in order (after `**` expansion).
    pub async fn names(&mut self) -> Vec<String> {
        self.expand().await;
        self.items.iter().map(|(n, _)| n.clone()).collect()
    }

    async fn expand(&mut self) {
        if self.expanded {
            return;
        }
        self.expanded = true;
        if !self.items.iter().any(|(n, _)| n == "**") {
            return;
        }
        let mut out = Vec::new();
        for (name, src) in std::mem::take(&mut self.items) {
            if name == "**" {
                if let Value::Dict(d) = crate::eval::expr::arg_value(&src, self.scope).await {
                    out.extend(d.into_iter().map(|(k, v)| (k, ArgSrc::Value(v))));
                }
            } else {
                out.push((name, src));
            }
        }
        self.items = out;
    }

    /// Whether an argument was given.
    pub async fn has(&mut self, name: &str) -> bool {
        self.expand().await;
        self.items.iter().any(|(n, _)| n == name)
    }

    /// The value of an argument, evaluated on first use; None when not given.
    pub async fn get(&mut self, name: &str) -> Option<Value> {
        self.expand().await;
        if let Some(v) = self.cache.get(name) {
            return Some(v.clone());
        }
        let idx = self.items.iter().position(|(n, _)| n == name)?;
        let v = crate::eval::expr::arg_value(&self.items[idx].1, self.scope).await;
        self.cache.insert(name.to_string(), v.clone());
        Some(v)
    }

    /// Every argument, evaluated, in order.
    pub async fn all(&mut self) -> Vec<(String, Value)> {
        let names = self.names().await;
        let mut out = Vec::with_capacity(names.len());
        for n in names {
            let v = self.get(&n).await.unwrap_or_default();
            out.push((n, v));
        }
        out
    }

    /// The first argument not in `allowed`, if any.
    pub async fn unexpected(&mut self, allowed: &[&str]) -> Option<String> {
        self.names()
            .await
            .into_iter()
            .find(|n| !allowed.contains(&n.as_str()))
    }
}

/// A call of a function.
pub struct Call<'a> {
    pub name: &'a str,
    pub args: Args<'a>,
    pub scope: &'a Scope,
    /// The call site (span start), keying aggregate state.
    pub site: usize,
}

impl Call<'_> {
    /// Logs `name: message` at ERROR and returns NULL, as vfilter functions do on bad args.
    pub fn fail(&self, message: impl std::fmt::Display) -> Value {
        self.scope
            .ctx()
            .log("ERROR", format!("{}: {message}", self.name));
        Value::Null
    }

    /// Checks for unexpected and missing required arguments; logs and returns false if bad.
    pub async fn check(&mut self, allowed: &[&str], required: &[&str]) -> bool {
        if let Some(bad) = self.args.unexpected(allowed).await {
            self.fail(format!("Unexpected arg {bad}"));
            return false;
        }
        for r in required {
            if !self.args.has(r).await {
                self.fail(format!("Field {r} is required"));
                return false;
            }
        }
        true
    }
}

/// A call of a plugin: arguments evaluated before it starts.
pub struct PluginCall {
    pub name: String,
    pub args: Vec<(String, Value)>,
    pub scope: Scope,
}

impl PluginCall {
    /// An argument's value.
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.args.iter().find(|(n, _)| n == name).map(|(_, v)| v)
    }

    /// Logs `name: message` at ERROR.
    pub fn fail(&self, message: impl std::fmt::Display) {
        self.scope
            .ctx()
            .log("ERROR", format!("{}: {message}", self.name));
    }

    /// Checks argument names; logs and returns false if bad.
    pub fn check(&self, allowed: &[&str], required: &[&str]) -> bool {
        if let Some((bad, _)) = self
            .args
            .iter()
            .find(|(n, _)| !allowed.contains(&n.as_str()))
        {
            self.fail(format!("Unexpected arg {bad}"));
            return false;
        }
        for r in required {
            if self.get(r).is_none() {
                self.fail(format!("Field {r} is required"));
                return false;
            }
        }
        true
    }
}
