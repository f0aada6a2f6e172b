//! Talon's VQL engine (SPEC-VQL): the lexer ([`lexer`]), the chumsky parser ([`parser`])
//! producing a syntax tree with spans ([`ast`]), and the formatter that gives canonical
//! column names ([`format`]).

pub mod ast;
pub mod format;
pub mod lexer;
pub mod parser;

pub use parser::{parse, ParseError};
pub mod engine;
pub mod eval;
pub mod functions;
pub mod plugins;
pub mod query;
pub mod registry;
pub mod runner;
pub mod scope;
pub mod value;

pub use runner::Runner;
pub use value::{Row, Value};
