//! `cpipe bench search`: the embedder against sentence-transformers (PyTorch, CPU) and fastembed
//! (ONNX Runtime) on the same weights and sentences, and the search server against Chroma's
//! embedded client on the same vectors: ingest time, search latency through the pipe against
//! in-process Chroma, recall@10 against exact search, disk and memory.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{ensure, Context, Result};
use models::embed::{Embedder, ModelFolder};
use serde_json::{json, Value};

use super::median;

/// Options of `cpipe bench search`.
#[derive(Debug, clap::Args)]
pub struct SearchBench {
    /// A Python with sentence-transformers, fastembed, onnx and chromadb
    /// (scripts/bench-search.sh installs them into .venv).
    #[arg(long, env = "CPIPE_BENCH_PYTHON", default_value = ".venv/bin/python")]
    pub python: PathBuf,
    /// Sentences embedded in the throughput run.
    #[arg(long, default_value_t = 1000)]
    pub sentences: usize,
    /// Documents (vectors of 384 dimensions) in the store comparison.
    #[arg(long, default_value_t = 100_000)]
    pub documents: usize,
    /// Searches timed.
    #[arg(long, default_value_t = 200)]
    pub queries: usize,
    /// Repetitions of the throughput run (the median is reported).
    #[arg(long, default_value_t = 3)]
    pub repetitions: usize,
}

const DIMENSION: usize = 384;

/// The anchor's side: sentence-transformers' throughput, and Chroma's ingest and searches.
const PYTHON: &str = r#"
import json, os, resource, sys, time
import numpy as np
mode, threads = sys.argv[1], int(sys.argv[2])
import torch
torch.set_num_threads(threads)
if mode == "embed":
    from sentence_transformers import SentenceTransformer
    folder, sentences, reps = sys.argv[3], json.load(open(sys.argv[4])), int(sys.argv[5])
    model = SentenceTransformer(folder, device="cpu")
    model.encode(sentences[:32], batch_size=32)
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        vectors = model.encode(sentences, batch_size=32)
        times.append(time.perf_counter() - start)
    print(json.dumps({"seconds": sorted(times)[len(times) // 2], "first": vectors[:5].tolist()}))
elif mode == "fastembed":
    import warnings
    warnings.filterwarnings("ignore")  # the exporter's notes on tracing, not results
    # fastembed runs ONNX models; no registry ships this one's export, so it is made here
    # from the same weights (PyTorch's ONNX exporter), and fastembed loads it from disk.
    import shutil
    from transformers import AutoModel
    from fastembed import TextEmbedding
    from fastembed.common.model_description import ModelSource, PoolingType
    folder, sentences, reps, export = sys.argv[3], json.load(open(sys.argv[4])), int(sys.argv[5]), sys.argv[6]
    os.makedirs(export, exist_ok=True)
    model = AutoModel.from_pretrained(folder).eval()
    sample = torch.ones(2, 8, dtype=torch.long)
    axes = {0: "batch", 1: "sequence"}
    names = ["input_ids", "attention_mask", "token_type_ids"]
    torch.onnx.export(model, (sample, sample, torch.zeros_like(sample)),
                      os.path.join(export, "model.onnx"), input_names=names,
                      output_names=["last_hidden_state"],
                      dynamic_axes={n: axes for n in names + ["last_hidden_state"]},
                      opset_version=17, dynamo=False)
    for name in os.listdir(folder):
        if name.endswith(".json"):
            shutil.copy(os.path.join(folder, name), export)
    TextEmbedding.add_custom_model(model="local/all-MiniLM-L6-v2", pooling=PoolingType.MEAN,
                                   normalization=True, dim=384, model_file="model.onnx",
                                   sources=ModelSource(hf="sentence-transformers/all-MiniLM-L6-v2"))
    model = TextEmbedding(model_name="local/all-MiniLM-L6-v2", specific_model_path=export,
                          threads=threads)
    list(model.embed(sentences[:32], batch_size=32))
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        vectors = list(model.embed(sentences, batch_size=32))
        times.append(time.perf_counter() - start)
    print(json.dumps({"seconds": sorted(times)[len(times) // 2],
                      "first": [v.tolist() for v in vectors[:5]]}))
else:
    import chromadb
    path, vectors_file, queries_file, k = sys.argv[3], sys.argv[4], sys.argv[5], 10
    vectors = np.fromfile(vectors_file, dtype=np.float32).reshape(-1, 384)
    queries = np.fromfile(queries_file, dtype=np.float32).reshape(-1, 384)
    client = chromadb.PersistentClient(path=path)
    collection = client.create_collection("bench", metadata={"hnsw:space": "cosine"})
    batch = min(client.get_max_batch_size(), 5000)
    ids = [f"d{i}" for i in range(len(vectors))]
    start = time.perf_counter()
    for i in range(0, len(vectors), batch):
        collection.add(ids=ids[i:i + batch], embeddings=vectors[i:i + batch])
    ingest = time.perf_counter() - start
    truth = np.argsort(-(queries @ vectors.T), axis=1)[:, :k]
    latencies, found = [], 0
    for q, expected in zip(queries, truth):
        t = time.perf_counter()
        got = collection.query(query_embeddings=[q.tolist()], n_results=k)["ids"][0]
        latencies.append(time.perf_counter() - t)
        found += len(set(int(g[1:]) for g in got) & set(expected.tolist()))
    latencies.sort()
    disk = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)
    print(json.dumps({"ingest": ingest, "p50": latencies[len(latencies) // 2],
                      "p99": latencies[int(len(latencies) * 0.99)], "recall": found / (k * len(queries)),
                      "disk": disk, "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
"#;

/// A deterministic stream of pseudo-random numbers (an LCG): the same sentences and vectors
/// on both sides of every run.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }

    /// Uniform in (0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() as f64 + 0.5) / (1u64 << 31) as f64
    }

    /// A standard normal number (Box-Muller).
    fn normal(&mut self) -> f32 {
        let (a, b) = (self.unit(), self.unit());
        ((-2.0 * a.ln()).sqrt() * (std::f64::consts::TAU * b).cos()) as f32
    }
}

/// Sentences of 4 to 40 common words.
fn sentences(n: usize) -> Vec<String> {
    const WORDS: &[&str] = &[
        "the", "river", "city", "market", "music", "quiet", "engine", "bread", "morning",
        "children", "library", "storm", "garden", "price", "train", "doctor", "winter", "light",
        "paper", "mountain", "coffee", "window", "election", "software", "ocean", "history",
        "football", "recipe", "planet", "museum", "bicycle", "forest", "language", "bank", "is",
        "was", "runs", "opens", "falls", "grows", "reads", "builds", "near", "under", "after",
        "before", "with", "without", "and", "but", "slowly", "again", "today", "red",
    ];
    let mut rng = Lcg(7);
    (0..n)
        .map(|_| {
            let len = 4 + (rng.next() % 37) as usize;
            let words: Vec<&str> = (0..len)
                .map(|_| WORDS[(rng.next() % WORDS.len() as u64) as usize])
                .collect();
            let mut sentence = words.join(" ");
            sentence.push('.');
            sentence
        })
        .collect()
}

/// `n` unit vectors in clusters around `centers` random directions, as sentence embeddings
/// cluster by topic (uniformly random vectors in 384 dimensions are all nearly equidistant,
/// which no real collection is and which approximate indexes cannot search).
fn clustered_vectors(n: usize, centers: usize, seed: u64) -> Vec<f32> {
    let mut rng = Lcg(seed);
    let middles: Vec<Vec<f32>> = (0..centers)
        .map(|_| (0..DIMENSION).map(|_| rng.normal()).collect())
        .collect();
    let mut all = Vec::with_capacity(n * DIMENSION);
    for _ in 0..n {
        let middle = &middles[(rng.next() % centers as u64) as usize];
        let v: Vec<f32> = middle.iter().map(|m| m + 0.6 * rng.normal()).collect();
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        all.extend(v.iter().map(|x| x / norm));
    }
    all
}

fn write_f32(path: &Path, values: &[f32]) -> Result<()> {
    let bytes: Vec<u8> = values.iter().flat_map(|x| x.to_le_bytes()).collect();
    std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))
}

fn python(options: &SearchBench, args: &[&str]) -> Result<Value> {
    let out = Command::new(&options.python)
        .args(["-c", PYTHON])
        .args(args)
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running {}", options.python.display()))?;
    ensure!(
        out.status.success(),
        "the Python anchor failed: install it with scripts/bench-search.sh (or pass --python)"
    );
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(serde_json::from_str(text.lines().last().unwrap_or(""))?)
}

/// A process's resident memory now and at its peak, in bytes.
fn memory(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1e6
}

/// The lowest cosine between an anchor's first vectors (`first`, unit length) and ours.
fn lowest_cosine(anchor: &Value, ours: &[models::embed::Embedding]) -> f32 {
    anchor["first"]
        .as_array()
        .into_iter()
        .flatten()
        .zip(ours)
        .map(|(v, e)| {
            v.as_array()
                .into_iter()
                .flatten()
                .zip(&e.vector)
                .map(|(a, b)| a.as_f64().unwrap_or(0.0) as f32 * b)
                .sum::<f32>()
        })
        .fold(f32::INFINITY, f32::min)
}

/// Runs the benchmark and prints the tables.
pub fn run(options: &SearchBench) -> Result<()> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let folder = crate::assets::offline("minilm", "all-MiniLM-L6-v2", "minilm")?;
    let work = std::env::temp_dir().join(format!("cpipe-bench-search-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;

    // 1. Embedding throughput.
    let texts = sentences(options.sentences);
    let texts_file = work.join("sentences.json");
    std::fs::write(&texts_file, serde_json::to_vec(&texts)?)?;
    let embedder = Embedder::load(
        &ModelFolder::Local(folder.clone()),
        &models::device::best_device(),
    )?;
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    embedder.embed(&refs[..32.min(refs.len())], |_| ())?;
    let mut times = Vec::new();
    let mut ours = Vec::new();
    for _ in 0..options.repetitions {
        let start = Instant::now();
        ours = embedder.embed(&refs, |_| ())?;
        times.push(start.elapsed().as_secs_f64());
    }
    let engine = median(times);
    // Both anchors embed the same sentences with the same weights and threads.
    let (threads_arg, repetitions) = (threads.to_string(), options.repetitions.to_string());
    let embedding = |mode: &str, extra: &[&str]| {
        let common = [
            mode,
            &threads_arg,
            folder.to_str().unwrap_or_default(),
            texts_file.to_str().unwrap_or_default(),
            &repetitions,
        ];
        python(options, &[&common[..], extra].concat())
    };
    let anchor = embedding("embed", &[])?;
    let theirs = anchor["seconds"].as_f64().unwrap_or(f64::NAN);
    let export = work.join("onnx");
    let fastembed = embedding("fastembed", &[export.to_str().unwrap_or_default()])?;
    let onnx = fastembed["seconds"].as_f64().unwrap_or(f64::NAN);
    let dir = work.join("pipes");
    std::fs::create_dir_all(&dir)?;
    let db = work.join("cpipe.db");
    let server = super::serve(
        &dir,
        &[
            "search",
            "--model",
            folder.to_str().unwrap_or_default(),
            "--db",
            db.to_str().unwrap_or_default(),
        ],
    )?;
    let mut client = super::connect_ready(&dir, "search")?;
    client.call("embed", json!({"texts": texts[..32.min(texts.len())]}))?;
    let start = Instant::now();
    client.call("embed", json!({"texts": texts}))?;
    let piped = start.elapsed().as_secs_f64();
    let n = options.sentences as f64;
    println!(
        "Embedding {} sentences (all-MiniLM-L6-v2, {threads} threads, median of {})",
        options.sentences, options.repetitions
    );
    println!(
        "{:<40} {:>12} {:>10} {:>13}",
        "", "sentences/s", "ratio", "vs fastembed"
    );
    for (name, seconds) in [
        ("sentence-transformers (PyTorch CPU)", theirs),
        ("fastembed (ONNX Runtime, same weights)", onnx),
        ("cpipe engine", engine),
        ("cpipe search server, embed (one request)", piped),
    ] {
        println!(
            "{name:<40} {:>12.0} {:>9.2}x {:>12.2}x",
            n / seconds,
            theirs / seconds,
            onnx / seconds
        );
    }
    println!(
        "lowest cosine with cpipe's on the first five sentences: sentence-transformers {:.5}, \
         fastembed {:.5}\n",
        lowest_cosine(&anchor, &ours),
        lowest_cosine(&fastembed, &ours)
    );

    // 2. The store against Chroma.
    // Queries are drawn from the same clusters as the documents, but are not among them.
    let all = clustered_vectors(options.documents + options.queries, 1000, 11);
    let (vectors, queries) = all.split_at(options.documents * DIMENSION);
    let (vectors_file, queries_file) = (work.join("vectors.f32"), work.join("queries.f32"));
    write_f32(&vectors_file, vectors)?;
    write_f32(&queries_file, queries)?;
    client.call(
        "collections",
        json!({"action": "create", "name": "bench", "dimension": DIMENSION}),
    )?;
    let start = Instant::now();
    for (b, chunk) in vectors.chunks(1000 * DIMENSION).enumerate() {
        let documents: Vec<Value> = chunk
            .chunks(DIMENSION)
            .enumerate()
            .map(|(i, v)| json!({"id": format!("d{}", b * 1000 + i), "vector": v}))
            .collect();
        client.call(
            "add",
            json!({"collection": "bench", "documents": documents}),
        )?;
    }
    let ingest = start.elapsed().as_secs_f64();
    let k = 10;
    let mut latencies = Vec::new();
    let mut found = 0usize;
    for q in queries.chunks(DIMENSION) {
        let mut exact: Vec<(usize, f32)> = vectors
            .chunks(DIMENSION)
            .enumerate()
            .map(|(i, v)| (i, v.iter().zip(q).map(|(a, b)| a * b).sum()))
            .collect();
        exact.select_nth_unstable_by(k, |a, b| b.1.total_cmp(&a.1));
        let truth: std::collections::HashSet<String> =
            exact[..k].iter().map(|(i, _)| format!("d{i}")).collect();
        let t = Instant::now();
        let hits = client.call(
            "search",
            json!({"collection": "bench", "vector": q, "k": k}),
        )?;
        latencies.push(t.elapsed().as_secs_f64());
        let ids = hits[0]
            .get("hits")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        found += ids
            .iter()
            .filter(|h| h["id"].as_str().is_some_and(|id| truth.contains(id)))
            .count();
    }
    latencies.sort_by(f64::total_cmp);
    let p = |q: f64| {
        latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)] * 1000.0
    };
    let (rss, peak) = memory(server.pid());
    let disk: u64 = ["", "-wal", "-shm"]
        .iter()
        .filter_map(|suffix| std::fs::metadata(format!("{}{suffix}", db.display())).ok())
        .map(|m| m.len())
        .sum();
    let chroma = python(
        options,
        &[
            "chroma",
            &threads.to_string(),
            work.join("chroma").to_str().unwrap_or_default(),
            vectors_file.to_str().unwrap_or_default(),
            queries_file.to_str().unwrap_or_default(),
        ],
    )?;
    let get = |key: &str| chroma[key].as_f64().unwrap_or(f64::NAN);
    println!(
        "{} documents of {DIMENSION} dimensions, {} searches of k={k} (cosine)",
        options.documents, options.queries
    );
    println!(
        "{:<32} {:>10} {:>10} {:>10} {:>10} {:>10} {:>12}",
        "", "ingest s", "p50 ms", "p99 ms", "recall@10", "disk MB", "memory MB"
    );
    println!(
        "{:<32} {:>10.1} {:>10.2} {:>10.2} {:>10.3} {:>10.0} {:>12}",
        "Chroma (in-process, HNSW)",
        get("ingest"),
        get("p50") * 1000.0,
        get("p99") * 1000.0,
        get("recall"),
        get("disk") / 1e6,
        format!("{:.0} peak", get("peak_rss") / 1e6)
    );
    println!(
        "{:<32} {:>10.1} {:>10.2} {:>10.2} {:>10.3} {:>10.0} {:>12}",
        "cpipe search (pipe, exact)",
        ingest,
        p(0.5),
        p(0.99),
        found as f64 / (k * options.queries) as f64,
        mb(disk),
        format!("{:.0} ({:.0} peak)", mb(rss), mb(peak))
    );
    drop(client);
    drop(server);
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}
