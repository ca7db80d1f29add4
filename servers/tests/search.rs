//! End-to-end tests of `cpipe --serve search` on the real all-MiniLM-L6-v2 (installed by
//! scripts/fetch-models.sh minilm) and a real SQLite database.

mod common;

use std::time::{Duration, Instant};

use common::*;
use pipe_core::{Client, ErrorCode, Step};
use serde_json::{json, Value};

/// The flags of a search server `name` on MiniLM with its database at `db`.
fn search_args<'a>(db: &'a std::path::Path, name: &'a str) -> [&'a str; 6] {
    let db = db.to_str().unwrap();
    ["--model", "minilm", "--db", db, "--name", name]
}

fn start(dir: &TestDir, name: &str) -> Server {
    let db = dir.path().join("search.db");
    dir.serve_loaded("search", &search_args(&db, name))
}

fn client(dir: &TestDir, name: &str) -> Client {
    dir.client_of(name, Duration::from_secs(120))
}

fn ids(hits: &Value) -> Vec<&str> {
    hits["hits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["id"].as_str().unwrap())
        .collect()
}

/// The ids a search answers, best first.
fn search_ids(c: &mut Client, args: Value) -> Vec<String> {
    ids(&call(c, "search", args))
        .into_iter()
        .map(String::from)
        .collect()
}

fn call(c: &mut Client, cmd: &str, args: Value) -> Value {
    let events = c.call(cmd, args).unwrap();
    events.last().unwrap().fields().clone().into()
}

fn error_of(c: &mut Client, cmd: &str, args: Value) -> (ErrorCode, String) {
    match c.call(cmd, args) {
        Err(pipe_core::Error::Remote { code, message }) => (code, message),
        other => panic!("{cmd}: expected an error, got {other:?}"),
    }
}

#[test]
fn finds_paraphrases_filters_and_keeps_everything_across_a_restart() {
    let dir = TestDir::new("search");
    let mut server = start(&dir, "search");
    let mut c = client(&dir, "search");
    let added = call(
        &mut c,
        "add",
        json!({"collection": "facts", "documents": [
            {"id": "paris", "text": "Paris is the capital of France.", "metadata": {"topic": "geo", "year": 2020}},
            {"id": "berlin", "text": "Berlin is the capital of Germany.", "metadata": {"topic": "geo", "year": 2021}},
            {"id": "banana", "text": "Bananas are rich in potassium.", "metadata": {"topic": "food", "year": 2022}},
            {"id": "pipes", "text": "Named pipes connect processes on one machine.", "metadata": {"topic": "tech", "year": 2023}}
        ]}),
    );
    assert_eq!(added["stored"], 4);
    assert_eq!(added["created"], true);
    let hits = call(
        &mut c,
        "search",
        json!({"collection": "facts", "query": "What is the main city of the French?", "k": 2}),
    );
    assert_eq!(ids(&hits)[0], "paris", "{hits}");
    assert_eq!(
        search_ids(
            &mut c,
            json!({"collection": "facts", "query": "Which fruit is healthy?", "k": 1})
        ),
        ["banana"]
    );
    assert_eq!(
        search_ids(
            &mut c,
            json!({"collection": "facts", "query": "capital city", "k": 5,
               "filter": {"$and": [{"topic": "geo"}, {"year": {"$gte": 2021}}]}})
        ),
        ["berlin"]
    );
    let hybrid = call(
        &mut c,
        "search",
        json!({"collection": "facts", "query": "potassium", "k": 1, "hybrid": true}),
    );
    assert_eq!(ids(&hybrid), ["banana"]);
    let replaced = call(
        &mut c,
        "upsert",
        json!({"collection": "facts", "documents": [
            {"id": "berlin", "text": "Berlin is a city of museums.", "metadata": {"topic": "art"}}]}),
    );
    assert_eq!(replaced["stored"], 1);
    let deleted = call(
        &mut c,
        "delete",
        json!({"collection": "facts", "ids": ["pipes"]}),
    );
    assert_eq!(deleted["deleted"], 1);
    drop(c);
    server.kill();

    // A new process on the same database finds everything as it was left.
    let _server = start(&dir, "search");
    let mut c = client(&dir, "search");
    assert_eq!(
        call(&mut c, "count", json!({"collection": "facts"}))["count"],
        3
    );
    let got = call(
        &mut c,
        "get",
        json!({"collection": "facts", "ids": ["berlin"]}),
    );
    assert_eq!(got["documents"][0]["metadata"]["topic"], "art");
    assert_eq!(
        search_ids(
            &mut c,
            json!({"collection": "facts", "query": "French capital", "k": 1})
        ),
        ["paris"]
    );
}

#[test]
fn bad_input_gets_clear_errors_and_the_server_stays_up() {
    let dir = TestDir::new("searchbad");
    let _server = start(&dir, "search");
    let mut c = client(&dir, "search");
    call(
        &mut c,
        "add",
        json!({"documents": [{"id": "a", "text": "Some text."}]}),
    );
    let cases = [
        ("embed", json!({"texts": ["fine", "  "]}), "is empty"),
        (
            "add",
            json!({"documents": [{"id": "b", "text": ""}]}),
            "is empty",
        ),
        (
            "embed",
            json!({"text": "word ".repeat(2_200_000)}),
            "split it into passages",
        ),
        ("search", json!({"vector": [1.0, 2.0]}), "dimension 384"),
        (
            "search",
            json!({"collection": "nosuch", "query": "x"}),
            "no collection named 'nosuch'",
        ),
        (
            "search",
            json!({"query": "x", "filter": {"year": {"$between": [1, 2]}}}),
            "unknown operator $between",
        ),
        (
            "search",
            json!({"query": "x", "filter": "jazz"}),
            "must be an object",
        ),
        (
            "add",
            json!({"documents": [{"id": "a", "text": "again"}]}),
            "ids already present: a",
        ),
        ("add", json!({"documents": [{"id": "c"}]}), "needs a text"),
        ("delete", json!({}), "give ids or a filter"),
        ("collections", json!({"action": "shred"}), "must be one of"),
    ];
    for (cmd, args, says) in cases {
        let (code, message) = error_of(&mut c, cmd, args.clone());
        assert!(
            message.contains(says),
            "{cmd} {args:.80}: {code:?} {message}"
        );
    }
    assert_eq!(
        error_of(&mut c, "count", json!({"collection": "nosuch"})).0,
        ErrorCode::NotFound
    );
    assert_eq!(
        call(&mut c, "count", json!({}))["count"],
        1,
        "nothing half-written"
    );
    assert!(c.call("ping", Value::Null).is_ok());
}

#[test]
fn a_corrupt_database_and_a_second_server_on_one_database_are_reported() {
    let dir = TestDir::new("searchdb");
    let junk = dir.path().join("junk.db");
    std::fs::write(&junk, vec![b'x'; 8192]).unwrap();
    let _broken = dir.serve("search", &search_args(&junk, "broken"));
    assert!(eventually(Duration::from_secs(30), || dir
        .state_of("broken")
        == "error"));
    let out = dir.run(&["broken", "count"]);
    let error = &json_lines(&out)[0];
    assert_eq!(error["code"], "unavailable");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("not a database"),
        "{error}"
    );

    let _first = start(&dir, "first");
    let db = dir.path().join("search.db");
    let _second = dir.serve("search", &search_args(&db, "second"));
    assert!(eventually(Duration::from_secs(30), || dir
        .state_of("second")
        == "error"));
    let out = dir.run(&["second", "count"]);
    let message = json_lines(&out)[0]["message"].as_str().unwrap().to_string();
    assert!(
        message.contains("in use by another search server"),
        "{message}"
    );
}

/// A search server `name` whose database is on a tmpfs mounted with `options` in the server's
/// own mount namespace (`unshare`), so a test can make a disk full or read-only.
fn serve_on_tmpfs(dir: &TestDir, options: &str, name: &str) -> Server {
    let disk = dir.path().join("disk");
    std::fs::create_dir(&disk).unwrap();
    let db = disk.join("search.db");
    let mount = format!(
        "mount -t tmpfs -o {options} tmpfs '{}' && exec \"$@\"",
        disk.display()
    );
    let wrapper = [
        "unshare",
        "--map-root-user",
        "--mount",
        "sh",
        "-c",
        &mount,
        "sh",
    ];
    dir.serve_under(&wrapper, "search", &search_args(&db, name))
}

/// A database on a disk that fills up: the write that does not fit gets an error saying the
/// disk is full, everything acknowledged before it stays, and the server goes on answering.
/// The disk is a 2 MB tmpfs.
#[test]
fn a_full_disk_refuses_the_write_that_does_not_fit_and_keeps_the_rest() {
    let dir = TestDir::new("searchfull");
    let _server = serve_on_tmpfs(&dir, "size=2m", "full");
    assert!(eventually(Duration::from_secs(120), || dir
        .state_of("full")
        == "idle"));
    let mut c = client(&dir, "full");
    // Each request: 100 documents of 384 numbers (about 2 kB each in SQLite and its log).
    let mut acknowledged = 0;
    let mut refusal = None;
    for request in 0..50 {
        let documents: Vec<Value> = (0..100)
            .map(|i| {
                let n = request * 100 + i;
                let vector: Vec<f32> = (0..384).map(|d| ((n * 7 + d) % 13) as f32 + 0.5).collect();
                json!({"id": n.to_string(), "text": format!("document {n}"), "vector": vector})
            })
            .collect();
        match c.call("add", json!({"collection": "c", "documents": documents})) {
            Ok(events) => {
                acknowledged += events
                    .last()
                    .unwrap()
                    .get("stored")
                    .unwrap()
                    .as_u64()
                    .unwrap()
            }
            Err(pipe_core::Error::Remote { message, .. }) => {
                refusal = Some(message);
                break;
            }
            Err(e) => panic!("the server failed: {e}"),
        }
    }
    let message = refusal.expect("2 MB took 5,000 documents: the disk never filled");
    assert!(
        message.contains("full") && message.contains("free some space"),
        "{message}"
    );
    assert!(acknowledged > 0);
    // A request is written in batches: one that failed part way says what it stored.
    if let Some(part) = message.split("the first ").nth(1) {
        acknowledged += part.split(' ').next().unwrap().parse::<u64>().unwrap();
    }
    let counted = call(&mut c, "count", json!({"collection": "c"}));
    assert_eq!(counted["count"].as_u64(), Some(acknowledged), "{counted}");
    let hits = call(
        &mut c,
        "search",
        json!({"collection": "c", "query": "document 0", "k": 3}),
    );
    assert_eq!(hits["hits"].as_array().unwrap().len(), 3, "{hits}");
}

/// A database on a read-only filesystem: the server stays up in state `error` and says why
/// and what to do.
#[test]
fn a_database_on_a_read_only_disk_is_refused_with_what_to_do() {
    let dir = TestDir::new("searchro");
    let _server = serve_on_tmpfs(&dir, "size=1m,ro", "ro");
    assert!(eventually(Duration::from_secs(60), || dir.state_of("ro") == "error"));
    let out = dir.run(&["ro", "count"]);
    let message = json_lines(&out)[0]["message"].as_str().unwrap().to_string();
    assert!(
        message.contains("Read-only file system") && message.contains("writable disk"),
        "{message}"
    );
}

/// `n` short documents, from `from` on, in one request: their texts are embedded on the way in.
fn ingest(from: usize, n: usize) -> Value {
    let documents: Vec<Value> = (from..from + n)
        .map(|i| json!({"id": format!("doc{i:05}"), "text": format!("Document number {i} of the bulk ingest."),
                        "metadata": {"i": i}}))
        .collect();
    json!({"collection": "bulk", "documents": documents})
}

#[test]
fn kill_9_during_an_ingest_loses_nothing_acknowledged() {
    let dir = TestDir::new("searchkill");
    let mut server = start(&dir, "search");
    let mut c = client(&dir, "search");
    call(
        &mut c,
        "collections",
        json!({"action": "create", "name": "bulk"}),
    );
    let id = c.send("add", ingest(0, 10_000)).unwrap();
    let mut acknowledged = 0;
    let mut events = c.events_of(id);
    while acknowledged < 2_000 {
        match events.next_within(Duration::from_secs(60)).unwrap() {
            Step::Event(e) if e.name() == "progress" => {
                acknowledged = e.get("stored").and_then(Value::as_u64).unwrap();
            }
            Step::Event(e) => panic!("{e}"),
            Step::End => panic!("the ingest ended before the kill"),
            Step::Pending => panic!("no progress"),
        }
    }
    server.kill();
    drop(c);

    let _server = start(&dir, "search");
    let mut c = client(&dir, "search");
    let count = call(&mut c, "count", json!({"collection": "bulk"}))["count"]
        .as_u64()
        .unwrap();
    assert!(
        count >= acknowledged,
        "{count} < {acknowledged} acknowledged"
    );
    assert_eq!(count % 64, 0, "batches are whole: {count}");
    let last = format!("doc{:05}", acknowledged - 1);
    let got = call(
        &mut c,
        "get",
        json!({"collection": "bulk", "ids": [last.clone()]}),
    );
    assert_eq!(got["documents"][0]["id"], last.as_str());
    // The database is whole: more can be added, and searched.
    let more = call(&mut c, "add", ingest(20_000, 10));
    assert_eq!(more["stored"], 10);
    assert_eq!(
        search_ids(
            &mut c,
            json!({"collection": "bulk", "query": "Document number 20003 of the bulk ingest.", "k": 1})
        ),
        ["doc20003"]
    );
}

#[test]
fn searches_are_answered_while_another_client_ingests() {
    let dir = TestDir::new("searchbusy");
    let _server = start(&dir, "search");
    let mut c = client(&dir, "search");
    call(
        &mut c,
        "add",
        json!({"documents": [{"id": "paris", "text": "Paris is the capital of France."}]}),
    );
    // Another process embeds 1,500 texts.
    let texts: Vec<Value> = (0..1500)
        .map(|i| json!({"id": format!("t{i}"), "text": format!("Sentence number {i} about nothing in particular.")}))
        .collect();
    let docs = json!(texts).to_string();
    let mut ingest = dir.streaming(&[
        "search",
        "add",
        "-j",
        &format!("documents={docs}"),
        "-t",
        "0",
    ]);
    assert!(eventually(Duration::from_secs(20), || dir
        .state_of("search")
        == "embedding"));
    let mut answered = 0;
    let started = Instant::now();
    while answered < 5 {
        let hits = call(&mut c, "search", json!({"query": "French capital", "k": 1}));
        assert_eq!(ids(&hits)[0], "paris");
        answered += 1;
    }
    let busy = dir.state_of("search") == "embedding";
    ingest.wait().unwrap();
    assert!(
        busy,
        "the ingest ended before the searches ({:?}): make it longer",
        started.elapsed()
    );
}

#[test]
fn index_reads_a_folders_text_files_into_passages() {
    let dir = TestDir::new("searchindex");
    let docs = dir.path().join("docs");
    std::fs::create_dir_all(docs.join("guides")).unwrap();
    std::fs::create_dir_all(docs.join(".git")).unwrap();
    std::fs::write(
        docs.join("guides/lighthouse.md"),
        "The lighthouse keeper lights the lamp at dusk.\n\nShips steer by its beam at night.",
    )
    .unwrap();
    std::fs::write(
        docs.join("bread.txt"),
        "Sourdough bread rises slowly overnight.",
    )
    .unwrap();
    std::fs::write(docs.join("image.png"), [0x89u8, b'P', b'N', b'G', 0, 0, 1]).unwrap();
    std::fs::write(docs.join(".git/HEAD"), "ref: refs/heads/main").unwrap();
    let _server = start(&dir, "search");
    let mut c = client(&dir, "search");
    let indexed = call(
        &mut c,
        "index",
        json!({"collection": "docs", "dir": docs.to_str().unwrap()}),
    );
    assert_eq!(indexed["files"], 2, "{indexed}");
    assert_eq!(indexed["skipped"], 1, "the binary: {indexed}");
    assert_eq!(indexed["passages"], 2);
    let hits = call(
        &mut c,
        "search",
        json!({"collection": "docs", "query": "Who turns on the light for ships?", "k": 1}),
    );
    assert_eq!(
        hits["hits"][0]["metadata"]["path"], "guides/lighthouse.md",
        "{hits}"
    );
    // Indexing again replaces a file's passages rather than adding copies.
    call(
        &mut c,
        "index",
        json!({"collection": "docs", "dir": docs.to_str().unwrap()}),
    );
    assert_eq!(
        call(&mut c, "count", json!({"collection": "docs"}))["count"],
        2
    );
    let (_, message) = error_of(&mut c, "index", json!({"dir": "docs"}));
    assert!(message.contains("absolute path"), "{message}");
}

/// examples/rag.rs, built beside the cpipe binary under test.
fn rag_example() -> std::path::PathBuf {
    let status = std::process::Command::new(env!("CARGO"))
        .args(["build", "--quiet", "-p", "examples", "--bin", "rag"])
        .status()
        .unwrap();
    assert!(status.success(), "cannot build examples/rag.rs");
    std::path::Path::new(cpipe_bin()).with_file_name("rag")
}

#[test]
fn the_rag_example_answers_from_the_passage_it_retrieved() {
    let dir = TestDir::new("searchrag");
    let docs = dir.path().join("docs");
    std::fs::create_dir_all(&docs).unwrap();
    std::fs::write(
        docs.join("lighthouse.md"),
        "The lighthouse on Kestrel Point was built in 1887 by the engineer Mara Lindqvist. \
         Its lamp is lit every evening at dusk.",
    )
    .unwrap();
    std::fs::write(
        docs.join("bread.md"),
        "Sourdough bread rises slowly overnight.",
    )
    .unwrap();
    let _search = start(&dir, "search");
    let _chat = dir.serve_loaded("chat", &["--model", "smollm2"]);
    let mut c = client(&dir, "search");
    call(&mut c, "index", json!({"dir": docs.to_str().unwrap()}));
    let out = std::process::Command::new(rag_example())
        .arg("Who built the lighthouse on Kestrel Point?")
        .env("CPIPE_DIR", dir.path())
        .output()
        .unwrap();
    let answer = text(&out.stdout);
    assert!(out.status.success(), "{answer}{}", text(&out.stderr));
    let (reply, sources) = answer.split_once("Sources:").expect("a sources list");
    assert!(reply.contains("Lindqvist"), "{answer}");
    assert!(
        sources.trim_start().starts_with("[1] lighthouse.md"),
        "{answer}"
    );
}
