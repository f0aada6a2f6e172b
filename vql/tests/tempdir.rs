//! tempdir() makes a directory that lives as long as its query: it exists while the query
//! runs, and is gone, with what was written into it, once the query ends.

#[tokio::test]
async fn a_tempdir_is_removed_when_its_query_ends() {
    let q = "LET D <= tempdir() \
             LET Written <= SELECT * FROM write_jsonl(filename=D + '/rows.jsonl', query={SELECT 1 AS x FROM scope()}) \
             SELECT D, stat(filename=D).IsDir AS Exists, read_file(filename=D + '/rows.jsonl') AS Text FROM scope()";
    let (rows, logs) = talon_vql::Runner::default().collect(q).await.unwrap();
    assert!(logs.is_empty(), "{logs:?}");
    assert_eq!(rows[0]["Exists"], talon_vql::Value::Bool(true));
    assert_eq!(rows[0]["Text"].to_text(), "{\"x\":1}\n");
    let dir = rows[0]["D"].to_text();
    assert!(dir.contains("talon-vql-"), "{dir}");
    assert!(!std::path::Path::new(&dir).exists(), "{dir} is still there");
}
