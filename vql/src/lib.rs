//! Talon's VQL engine (SPEC-VQL), independent of stores and networks:
//!
//! - [`limits`]: every limit of the engine, the ground floor both halves read;
//! - [`syntax`]: lexer, grammar (one function per production), parser, syntax tree with
//!   spans, formatter;
//! - [`eval`]: values, scopes, expressions, queries, the registry, the host port
//!   ([`engine::Host`], with typed [`engine::HostError`]s) and the runner;
//! - [`builtins`]: the functions and plugins, which fill the registry.
//!
//! The modules most callers use are re-exported at the top: [`ast`], [`format`],
//! [`parser`], [`engine`], [`registry`], [`value`].

pub mod builtins;
pub mod eval;
pub mod limits;
pub mod syntax;

pub use eval::runner::Runner;
pub use eval::value::{Row, Value};
pub use eval::{engine, registry, value};
pub use syntax::parser::{parse, ParseError};
pub use syntax::{ast, format, lexer, parser};
