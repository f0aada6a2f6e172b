//! VQL's evaluator: values and their operators ([`value`]), scopes ([`scope`]),
//! expressions ([`expr`]), SELECT and LET ([`query`]), the registry functions and plugins
//! are looked up in ([`registry`]), the host port and per-query context ([`engine`]) and
//! the runner that parses and streams a program ([`runner`]).

pub mod engine;
pub mod expr;
pub mod query;
pub mod registry;
pub mod runner;
pub mod scope;
pub mod value;
