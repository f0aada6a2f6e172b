//! Every limit of the VQL engine in one place (the ground floor: the parser and the
//! evaluator both read it, neither owns it). Each bounds what one hostile or careless
//! query can make the server do.

/// Deepest bracket nesting the parser accepts (`((((...))))`, `[[[...]]]`, `{{...}}`).
pub const MAX_NESTING: usize = 64;
/// Deepest expression tree the parser accepts (`1+1+...`, `a.b.c...`); evaluation
/// recurses once per level.
pub const MAX_EXPR_DEPTH: usize = 128;
/// Deep enough for any real query; `LET X = 1 + X` stops here with NULL.
pub const MAX_DEPTH: usize = 100;
/// Depth a call of a LET expression or function counts for (recursion stops after 25).
pub const CALL_WEIGHT: usize = 4;
/// Largest string a query may build by concatenation or repetition.
pub const MAX_STRING_BYTES: usize = 100 * 1024 * 1024;
