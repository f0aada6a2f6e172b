//! VQL's syntax: tokens ([`lexer`], vfilter's first-match rule order), the grammar
//! ([`grammar`], one function per production), the parser that runs it and applies the
//! nesting limits ([`parser`]), the syntax tree with spans ([`ast`]) and the formatter
//! that gives canonical column names ([`format`]). Nothing here evaluates.

pub mod ast;
pub mod format;
pub mod grammar;
pub mod lexer;
pub mod parser;
