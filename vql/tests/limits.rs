//! Deep input is an error, never a crash (stack overflow would take the server down).

fn run(q: &str) -> Result<Vec<talon_vql::Row>, talon_vql::ParseError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(talon_vql::Runner::default().collect(q))
        .map(|r| r.0)
}

#[test]
fn recursion_stops_with_null() {
    let rows = run("LET X = 1 + X SELECT X AS a, X(X=1) AS b FROM scope()").unwrap();
    assert_eq!(
        talon_vql::Value::Dict(rows[0].clone())
            .to_json()
            .to_string(),
        r#"{"a":null,"b":2}"#
    );
    let rows = run("LET F(n) = F(n=n + 1) SELECT F(n=1) AS a FROM scope()").unwrap();
    assert!(rows[0]["a"].is_null());
}

#[test]
fn deep_nesting_is_an_error_not_a_crash() {
    let q = format!(
        "SELECT {}1{} FROM scope()",
        "(".repeat(5000),
        ")".repeat(5000)
    );
    assert!(run(&q).unwrap_err().message.contains("nested deeper"));
    let q = format!("SELECT {}TRUE FROM scope()", "NOT ".repeat(5000));
    assert!(run(&q)
        .unwrap_err()
        .message
        .contains("expression nested deeper than 128"));
    let q = format!("SELECT 1{} FROM scope()", " + 1".repeat(5000));
    assert!(run(&q)
        .unwrap_err()
        .message
        .contains("expression nested deeper"));
    // The deepest accepted expression evaluates.
    let q = format!("SELECT 1{} AS n FROM scope()", " + 1".repeat(120));
    assert_eq!(run(&q).unwrap()[0]["n"], talon_vql::Value::Int(121));
}

/// A stored query or LET function that calls itself stops at the depth limit with an
/// error naming it, instead of overflowing the stack (which aborts the whole process).
#[test]
fn self_referencing_queries_stop_with_an_error() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for q in [
        "LET q = SELECT * FROM q SELECT * FROM q",
        "LET q(x) = SELECT * FROM q(x=x) SELECT * FROM q(x=1)",
        "LET a = SELECT * FROM b LET b = SELECT * FROM a SELECT * FROM a",
    ] {
        let (rows, logs) = rt
            .block_on(talon_vql::Runner::default().collect(q))
            .unwrap();
        assert!(rows.is_empty(), "{q}: {rows:?}");
        assert!(
            logs.iter()
                .any(|l| l.level == "ERROR" && l.message.contains("recursed deeper than")),
            "{q}: {logs:?}"
        );
    }
}

/// Very long chains (`1 + 1 + ...`, `x.a.a...`) are refused with the depth error on a
/// thread with a tokio worker's 2 MiB stack: the refused tree used to overflow the stack
/// as it was dropped, aborting the process (40 000 terms did; 30 000 did not).
#[test]
fn very_long_chains_are_refused_on_a_small_stack() {
    for q in [
        format!("SELECT 1{} FROM scope()", " + 1".repeat(100_000)),
        format!("SELECT dict(a=1){} FROM scope()", ".a".repeat(100_000)),
        format!("SELECT x{} FROM scope()", "[0]".repeat(100_000)),
    ] {
        let outcome = std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(move || run(&q).map(|_| ()).map_err(|e| e.message))
            .unwrap()
            .join()
            .expect("no panic");
        let message = outcome.expect_err("refused");
        assert!(message.contains("nested deeper than 128"), "{message}");
    }
}
