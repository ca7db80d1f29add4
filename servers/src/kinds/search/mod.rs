//! `cpipe --serve search`: a resident embedding model and a persistent vector store. Texts
//! are embedded on the engine worker (in batches, with progress); documents, their vectors
//! and metadata live in one SQLite database ([`store`]); search is by meaning (the nearest
//! vectors), by words (full-text), or both fused.

mod engine;
mod passages;
pub mod store;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use clap::{Args, FromArgMatches};
use models::embed::ModelFolder;
use pipe_core::{CommandSpec, Event, Request, Responder, ToolError, ToolServer};
use serde_json::{json, Map, Value};

use super::Kind;
use crate::engine::{Place, Worker};
use crate::vocab::ServerState;
use engine::{EmbedEngine, ModelInfo};
use store::{
    CollectionInfo, Hit, Metric, NewDocument, SqliteStore, StoreError, VectorStore, WriteMode,
};

/// The search kind.
pub const KIND: Kind = Kind {
    name: "search",
    summary: "Vector search server: a resident embedding model and a persistent store of documents, searched by meaning and by words.",
    help: include_str!("../../../../skills/cpipe/search.md"),
    args: SearchArgs::augment_args,
    build: |matches, builder| build(SearchArgs::from_arg_matches(matches)?, builder),
};

/// The model real users get by default: fetched once from the Hugging Face hub.
pub const DEFAULT_HUB_MODEL: &str = "sentence-transformers/all-MiniLM-L6-v2";

pipe_core::vocabulary! {
    /// What the search server emits.
    pub enum SearchEvent: EventName {
        /// embed: the vectors.
        Embeddings = "embeddings",
        /// add/upsert: a batch is stored (large writes).
        Progress = "progress",
        /// add/upsert: everything is stored.
        Added = "added",
        /// delete: how many went.
        Deleted = "deleted",
        /// get: the documents.
        Documents = "documents",
        /// search: the hits, best first.
        Hits = "hits",
        /// count: how many.
        Count = "count",
        /// index: a folder's files are indexed.
        Indexed = "indexed",
        /// collections: the list, or what was created or dropped.
        Collections = "collections",
    }
}

pipe_core::vocabulary! {
    /// The search server's own state.
    pub enum SearchState: StateName {
        /// Embedding texts.
        Embedding = "embedding",
    }
}

/// The search server's own flags.
#[derive(Debug, Args)]
pub struct SearchArgs {
    /// The database file (created if missing). Collections live in it.
    #[arg(long, value_name = "PATH", default_value_os_t = default_db())]
    pub db: PathBuf,

    /// The embedding model: a sentence-transformers folder, a Hugging Face repository
    /// (owner/name, fetched once into the hub cache), or `minilm` (all-MiniLM-L6-v2, installed
    /// by scripts/fetch-models.sh minilm).
    #[arg(long, value_name = "MODEL", default_value = DEFAULT_HUB_MODEL)]
    pub model: String,
}

/// `$XDG_DATA_HOME/cpipe/search.db`, else `~/.local/share/cpipe/search.db`.
fn default_db() -> PathBuf {
    let data = std::env::var_os("XDG_DATA_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into()))
                .join(".local/share")
        });
    data.join("cpipe/search.db")
}

/// Documents embedded and committed per transaction.
const WRITE_BATCH: usize = 64;
/// The longest text accepted, in bytes (longer ones are refused, not cut).
const MAX_TEXT_BYTES: usize = 1 << 20;
/// The most results one search or get returns.
const MAX_RESULTS: usize = 10_000;
/// The collection used when a request names none.
const DEFAULT_COLLECTION: &str = "default";

/// What the handlers share.
#[derive(Clone)]
struct Search {
    worker: Worker<EmbedEngine>,
    /// Opened by the worker before it loads the model (a failure to open is the load's).
    store: Arc<OnceLock<SqliteStore>>,
    model: Arc<OnceLock<ModelInfo>>,
}

fn store_error(e: StoreError) -> ToolError {
    match e {
        StoreError::NoCollection(_) => {
            ToolError::new(pipe_core::ErrorCode::NotFound, e.to_string())
        }
        StoreError::Database(_) => ToolError::internal(e.to_string()),
        _ => ToolError::invalid(e.to_string()),
    }
}

impl Search {
    /// The store, once the worker has opened it and loaded the model.
    fn store(&self) -> Result<&SqliteStore, ToolError> {
        self.model_info()?;
        self.store.get().ok_or_else(|| {
            ToolError::new(
                pipe_core::ErrorCode::Unavailable,
                "the database is not open",
            )
        })
    }

    /// The model's name and dimension, waiting for it to load if it is still loading.
    fn model_info(&self) -> Result<&ModelInfo, ToolError> {
        if self.model.get().is_none() {
            // An empty job: answered once the model is loaded (or failed to).
            self.worker
                .submit(
                    Vec::new(),
                    Place::client(None),
                    &pipe_core::CancelToken::new(),
                )
                .finish_with(|_| Ok(()))?;
        }
        self.model.get().ok_or_else(|| {
            ToolError::new(pipe_core::ErrorCode::Unavailable, "the model did not load")
        })
    }

    /// Embeds texts on the worker, in the requesting client's turn.
    fn embed(
        &self,
        texts: Vec<String>,
        req: &Request,
        out: &Responder,
    ) -> Result<Vec<models::embed::Embedding>, ToolError> {
        self.worker
            .submit(texts, Place::client(req.pid), &out.cancel_token())
            .finish_with(|never| match never {})
    }
}

/// A string field that must be there.
fn required_str<'r>(req: &'r Request, key: &str, cmd: &str) -> Result<&'r str, ToolError> {
    req.opt_str(key)?
        .ok_or_else(|| ToolError::invalid(format!("{cmd}: give \"{key}\"")))
}

/// The collection a request names, or the default one.
fn collection_of(req: &Request) -> Result<String, ToolError> {
    Ok(req
        .opt_str("collection")?
        .unwrap_or(DEFAULT_COLLECTION)
        .to_string())
}

/// A text to embed: not empty, not huge.
fn check_text(text: &str, what: &str) -> Result<(), ToolError> {
    if text.trim().is_empty() {
        return Err(ToolError::invalid(format!(
            "{what} is empty; give it some words"
        )));
    }
    if text.len() > MAX_TEXT_BYTES {
        return Err(ToolError::invalid(format!(
            "{what} is {} bytes, more than the {} a text may have; split it into passages \
             (the model reads only its first few hundred words anyway)",
            text.len(),
            MAX_TEXT_BYTES
        )));
    }
    Ok(())
}

/// A vector given in a request.
fn vector_of(value: &Value, what: &str) -> Result<Vec<f32>, ToolError> {
    let list = value
        .as_array()
        .ok_or_else(|| ToolError::invalid(format!("{what} must be a list of numbers")))?;
    list.iter()
        .map(|x| {
            x.as_f64()
                .filter(|x| x.is_finite())
                .map(|x| x as f32)
                .ok_or_else(|| ToolError::invalid(format!("{what} holds {x}, not a number")))
        })
        .collect()
}

/// The ids a request names, if it names any.
fn ids_of(req: &Request) -> Result<Option<Vec<String>>, ToolError> {
    match req.get("ids") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(ids)) => ids
            .iter()
            .map(|id| {
                id.as_str()
                    .map(String::from)
                    .ok_or_else(|| ToolError::invalid(format!("ids must be strings, got {id}")))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
        Some(other) => Err(ToolError::invalid(format!(
            "ids must be a list of strings, got {other}"
        ))),
    }
}

fn hit_json(hit: &Hit) -> Value {
    json!({
        "id": hit.document.id,
        "score": (hit.score as f64 * 1e6).round() / 1e6,
        "text": hit.document.text,
        "metadata": hit.document.metadata,
    })
}

fn collection_json(c: &CollectionInfo) -> Value {
    json!({"name": c.name, "model": c.model, "metric": c.metric.as_str(),
           "dimension": c.dimension, "count": c.count})
}

/// Reciprocal-rank fusion of two rankings (k = 60, as the method's authors chose).
fn fuse(by_meaning: Vec<Hit>, by_words: Vec<Hit>, k: usize) -> Vec<Hit> {
    let mut fused: Vec<(Hit, f32)> = Vec::new();
    let mut at: HashMap<String, usize> = HashMap::new();
    for ranking in [by_meaning, by_words] {
        for (rank, hit) in ranking.into_iter().enumerate() {
            let score = 1.0 / (60.0 + rank as f32 + 1.0);
            match at.get(&hit.document.id) {
                Some(&i) => fused[i].1 += score,
                None => {
                    at.insert(hit.document.id.clone(), fused.len());
                    fused.push((hit, score));
                }
            }
        }
    }
    fused.sort_by(|a, b| b.1.total_cmp(&a.1));
    fused
        .into_iter()
        .take(k)
        .map(|(hit, score)| Hit { score, ..hit })
        .collect()
}

/// What a write stored.
#[derive(Default)]
struct Written {
    stored: usize,
    /// The collection was made for it.
    created: bool,
    /// Ids whose texts were cut to the model's window.
    truncated: Vec<String>,
}

/// A document of an add/upsert, as the request gives it.
struct Incoming {
    id: String,
    text: Option<String>,
    metadata: Map<String, Value>,
    /// Given by the client, or `None`: embed the text.
    vector: Option<Vec<f32>>,
}

/// Reads `documents` of an add/upsert.
fn documents_of(req: &Request) -> Result<Vec<Incoming>, ToolError> {
    let list = match req.get("documents") {
        Some(Value::Array(list)) if !list.is_empty() => list,
        Some(Value::Array(_)) => return Err(ToolError::invalid("documents is empty")),
        _ => {
            return Err(ToolError::invalid(
                "give \"documents\": [{\"id\": ..., \"text\": ..., \"metadata\": {...}}, ...]",
            ))
        }
    };
    list.iter()
        .enumerate()
        .map(|(i, d)| {
            let id = d
                .get("id")
                .and_then(Value::as_str)
                .filter(|id| !id.is_empty())
                .ok_or_else(|| {
                    ToolError::invalid(format!("document {i} needs a non-empty string \"id\""))
                })?;
            let text = match d.get("text") {
                None | Some(Value::Null) => None,
                Some(Value::String(text)) => {
                    check_text(text, &format!("the text of document '{id}'"))?;
                    Some(text.clone())
                }
                Some(other) => {
                    return Err(ToolError::invalid(format!(
                        "document '{id}': text must be a string, got {other}"
                    )))
                }
            };
            let metadata = match d.get("metadata") {
                None | Some(Value::Null) => Map::new(),
                Some(Value::Object(m)) => m.clone(),
                Some(other) => {
                    return Err(ToolError::invalid(format!(
                        "document '{id}': metadata must be an object, got {other}"
                    )))
                }
            };
            let vector = match d.get("vector") {
                None | Some(Value::Null) => None,
                Some(v) => Some(vector_of(v, &format!("the vector of document '{id}'"))?),
            };
            if text.is_none() && vector.is_none() {
                return Err(ToolError::invalid(format!(
                    "document '{id}' needs a text (to embed) or a vector"
                )));
            }
            Ok(Incoming {
                id: id.to_string(),
                text,
                metadata,
                vector,
            })
        })
        .collect()
}

impl Search {
    /// add and upsert: embeds what has no vector, in batches, each committed before its
    /// progress event; the collection is made on first use with this server's model.
    fn write(&self, req: &Request, out: &Responder, mode: WriteMode) -> Result<(), ToolError> {
        let collection = collection_of(req)?;
        let documents = documents_of(req)?;
        let written = self.store_documents(&collection, documents, mode, req, out)?;
        out.emit(
            Event::new(SearchEvent::Added)
                .with("collection", collection)
                .with("stored", written.stored)
                .with("created", written.created)
                .with("truncated", written.truncated),
        )?;
        Ok(())
    }

    /// Embeds what has no vector, in batches, each committed before its progress event; the
    /// collection is made on first use with this server's model.
    fn store_documents(
        &self,
        collection: &str,
        documents: Vec<Incoming>,
        mode: WriteMode,
        req: &Request,
        out: &Responder,
    ) -> Result<Written, ToolError> {
        let collection = collection.to_string();
        let store = self.store()?;
        let model = self.model_info()?;
        let (info, created) = match store.collection(&collection) {
            Ok(info) => (info, false),
            Err(StoreError::NoCollection(_)) => {
                // Texts to embed take the model's dimension; vectors alone, their own.
                let dimension = match &documents[0].vector {
                    Some(v) if documents.iter().all(|d| d.vector.is_some()) => v.len(),
                    _ => model.dimension,
                };
                let model_name = if dimension == model.dimension {
                    &model.name
                } else {
                    "none"
                };
                (
                    store
                        .create(&collection, model_name, Metric::Cosine, dimension)
                        .map_err(store_error)?,
                    true,
                )
            }
            Err(e) => return Err(store_error(e)),
        };
        if info.model != model.name && documents.iter().any(|d| d.vector.is_none()) {
            return Err(ToolError::invalid(format!(
                "collection '{collection}' holds vectors of the model '{}', and this server \
                 embeds with '{}': give vectors, or use a collection of this model",
                info.model, model.name
            )));
        }
        if mode == WriteMode::Add {
            let ids: Vec<String> = documents.iter().map(|d| d.id.clone()).collect();
            let mut seen = std::collections::HashSet::new();
            let mut present: Vec<String> =
                ids.iter().filter(|id| !seen.insert(*id)).cloned().collect();
            for chunk in ids.chunks(500) {
                present.extend(
                    store
                        .get(&collection, Some(chunk), None, chunk.len(), 0)
                        .map_err(store_error)?
                        .into_iter()
                        .map(|d| d.id),
                );
            }
            if !present.is_empty() {
                return Err(store_error(StoreError::Duplicate(present)));
            }
        }
        let total = documents.len();
        let mut stored = 0;
        let mut truncated = Vec::new();
        for batch in documents.chunks(WRITE_BATCH) {
            let texts: Vec<String> = batch
                .iter()
                .filter(|d| d.vector.is_none())
                .filter_map(|d| d.text.clone())
                .collect();
            let mut embedded = if texts.is_empty() {
                Vec::new()
            } else {
                self.embed(texts, req, out)?
            }
            .into_iter();
            let mut new = Vec::with_capacity(batch.len());
            for Incoming {
                id,
                text,
                metadata,
                vector,
            } in batch
            {
                let vector = match vector {
                    Some(v) => v.clone(),
                    None => {
                        let e = embedded.next().expect("one embedding per text");
                        if e.truncated {
                            truncated.push(id.clone());
                        }
                        e.vector
                    }
                };
                new.push(NewDocument {
                    id: id.clone(),
                    text: text.clone(),
                    metadata: metadata.clone(),
                    vector,
                });
            }
            stored += store.write(&collection, new, mode).map_err(|e| {
                let mut error = store_error(e);
                if stored > 0 {
                    // Earlier batches are committed: say so, so the client resends the rest.
                    error.message = format!(
                        "{}; the first {stored} of the {total} documents were stored before \
                         this batch failed",
                        error.message
                    );
                }
                error
            })?;
            if total > WRITE_BATCH {
                out.emit(
                    Event::new(SearchEvent::Progress)
                        .with("stored", stored)
                        .with("total", total),
                )?;
            }
        }
        Ok(Written {
            stored,
            created,
            truncated,
        })
    }

    /// index: a folder's text files, cut into passages and upserted (a file's old passages
    /// are replaced).
    fn index(&self, req: &Request, out: &Responder) -> Result<(), ToolError> {
        let collection = collection_of(req)?;
        let dir = PathBuf::from(required_str(req, "dir", "index")?);
        if !dir.is_absolute() {
            return Err(ToolError::invalid(
                "index: give \"dir\" as an absolute path (the server's working directory is not yours)",
            ));
        }
        let limit = req.opt_u64("passage_chars")?.unwrap_or(1000) as usize;
        let found = passages::text_files(&dir).map_err(ToolError::invalid)?;
        let mut skipped = found.skipped;
        let mut documents = Vec::new();
        let mut files = Vec::new();
        for path in &found.files {
            out.check()?;
            let Some(text) = passages::read_text(path) else {
                skipped += 1;
                continue;
            };
            let relative = path
                .strip_prefix(&dir)
                .unwrap_or(path)
                .display()
                .to_string();
            let pieces = passages::passages(&text, limit);
            let count = pieces.len();
            for (n, piece) in pieces.into_iter().enumerate() {
                let mut metadata = Map::new();
                metadata.insert("path".into(), json!(relative));
                metadata.insert("passage".into(), json!(n));
                metadata.insert("passages".into(), json!(count));
                documents.push(Incoming {
                    id: format!("{relative}#{n}"),
                    text: Some(piece),
                    metadata,
                    vector: None,
                });
            }
            files.push(relative);
        }
        let store = self.store()?;
        if store.collection(&collection).is_ok() {
            // One transaction per 500 files, not one per file.
            for chunk in files.chunks(500) {
                store
                    .delete(&collection, None, Some(&json!({"path": {"$in": chunk}})))
                    .map_err(store_error)?;
            }
        }
        let passages = documents.len();
        let written = if documents.is_empty() {
            Written::default()
        } else {
            self.store_documents(&collection, documents, WriteMode::Upsert, req, out)?
        };
        out.emit(
            Event::new(SearchEvent::Indexed)
                .with("collection", collection)
                .with("files", files.len())
                .with("skipped", skipped)
                .with("passages", passages)
                .with("stored", written.stored)
                .with("truncated", written.truncated),
        )?;
        Ok(())
    }

    fn search(&self, req: &Request, out: &Responder) -> Result<(), ToolError> {
        let collection = collection_of(req)?;
        let k = req.opt_u64("k")?.unwrap_or(10).clamp(1, MAX_RESULTS as u64) as usize;
        let filter = req.get("filter").filter(|f| !f.is_null());
        let hybrid = req.opt_bool("hybrid")?.unwrap_or(false);
        let store = self.store()?;
        let query = req.opt_str("query")?;
        let vector = match (query, req.get("vector").filter(|v| !v.is_null())) {
            (Some(_), Some(_)) => {
                return Err(ToolError::invalid(
                    "search: give a query or a vector, not both",
                ))
            }
            (None, None) => {
                return Err(ToolError::invalid(
                    "search: give \"query\" (text to search by meaning) or \"vector\"",
                ))
            }
            (None, Some(v)) => vector_of(v, "vector")?,
            (Some(text), None) => {
                check_text(text, "the query")?;
                let info = store.collection(&collection).map_err(store_error)?;
                let model = self.model_info()?;
                if info.model != model.name {
                    return Err(ToolError::invalid(format!(
                        "collection '{collection}' holds vectors of the model '{}', and this \
                         server embeds with '{}': search it with a vector",
                        info.model, model.name
                    )));
                }
                self.embed(vec![text.to_string()], req, out)?
                    .remove(0)
                    .vector
            }
        };
        let pool = if hybrid { (k * 4).max(50) } else { k };
        let mut hits = store
            .search(&collection, &vector, pool, filter)
            .map_err(store_error)?;
        if hybrid {
            let text =
                query.ok_or_else(|| ToolError::invalid("hybrid search needs a query text"))?;
            let by_words = store
                .text_search(&collection, text, pool, filter)
                .map_err(store_error)?;
            hits = fuse(hits, by_words, k);
        }
        hits.truncate(k);
        out.emit(
            Event::new(SearchEvent::Hits)
                .with("collection", collection)
                .with("hits", hits.iter().map(hit_json).collect::<Vec<_>>()),
        )?;
        Ok(())
    }

    fn collections(&self, req: &Request, out: &Responder) -> Result<(), ToolError> {
        let store = self.store()?;
        let action = req.opt_str("action")?.unwrap_or("list");
        let event = match action {
            "list" => Event::new(SearchEvent::Collections).with(
                "collections",
                store
                    .collections()
                    .map_err(store_error)?
                    .iter()
                    .map(collection_json)
                    .collect::<Vec<_>>(),
            ),
            "create" => {
                let name = required_str(req, "name", "collections create")?;
                let metric = Metric::parse(req.opt_str("metric")?.unwrap_or("cosine"))
                    .map_err(ToolError::invalid)?;
                let model = self.model_info()?;
                let (model_name, dimension) = match req.opt_u64("dimension")? {
                    Some(d) if d as usize != model.dimension => ("none", d as usize),
                    _ => (model.name.as_str(), model.dimension),
                };
                let info = store
                    .create(name, model_name, metric, dimension)
                    .map_err(store_error)?;
                Event::new(SearchEvent::Collections).with("created", collection_json(&info))
            }
            "drop" => {
                let name = required_str(req, "name", "collections drop")?;
                let gone = store.drop_collection(name).map_err(store_error)?;
                Event::new(SearchEvent::Collections)
                    .with("dropped", name)
                    .with("documents", gone)
            }
            other => {
                return Err(ToolError::invalid(format!(
                    "collections: unknown action '{other}'; use list, create or drop"
                )))
            }
        };
        out.emit(event)?;
        Ok(())
    }
}

fn build(args: SearchArgs, builder: pipe_core::Builder) -> anyhow::Result<ToolServer> {
    let folder = if args.model == "minilm" {
        ModelFolder::Local(crate::assets::offline(
            "minilm",
            "all-MiniLM-L6-v2",
            "minilm",
        )?)
    } else {
        ModelFolder::parse(&args.model)?
    };
    let mut server = builder.initial_state(ServerState::Loading).bind()?;
    let handle = server.handle_ref();
    let search = Search {
        worker: Worker::new(),
        store: Arc::default(),
        model: Arc::default(),
    };
    {
        let (store, model, db) = (
            Arc::clone(&search.store),
            Arc::clone(&search.model),
            args.db,
        );
        search
            .worker
            .start("embedder", "model", handle.clone(), move || {
                let _ = store.set(SqliteStore::open(&db).map_err(|e| e.to_string())?);
                engine::load(&folder, &handle, &db, &model)
            })?;
    }
    register(&mut server, search);
    Ok(server)
}

/// The schema fields several commands share.
fn common_args(own: Value) -> Value {
    let mut properties = json!({
        "collection": {"type": "string", "description": "The collection (default \"default\")."},
    });
    if let (Some(all), Value::Object(own)) = (properties.as_object_mut(), own) {
        all.extend(own);
    }
    json!({"type": "object", "properties": properties})
}

fn filter_schema() -> Value {
    json!({"type": "object", "description": "A metadata filter: {\"key\": value}, {\"key\": {\"$gte\": 3}} ($eq $ne $gt $gte $lt $lte $in $nin), {\"$and\": [...]}, {\"$or\": [...]}."})
}

fn register(server: &mut ToolServer, search: Search) {
    let s = search.clone();
    server.handle(
        CommandSpec::new("embed", "Embeds texts: one vector per text, in order.")
            .args(json!({"type": "object", "properties": {
                "texts": {"type": "array", "items": {"type": "string"}, "description": "The texts."},
                "text": {"type": "string", "description": "One text, instead of texts."}
            }}))
            .emits(&[SearchEvent::Embeddings]),
        move |req, out| {
            let texts: Vec<String> = match (req.get("texts"), req.opt_str("text")?) {
                (Some(Value::Array(list)), None) => list
                    .iter()
                    .map(|t| t.as_str().map(String::from).ok_or_else(|| ToolError::invalid(format!("texts must be strings, got {t}"))))
                    .collect::<Result<_, _>>()?,
                (None, Some(text)) => vec![text.to_string()],
                _ => return Err(ToolError::invalid("embed: give \"texts\" (a list) or \"text\"")),
            };
            if texts.is_empty() {
                return Err(ToolError::invalid("embed: texts is empty"));
            }
            for (i, text) in texts.iter().enumerate() {
                check_text(text, &format!("text {i}"))?;
            }
            let model = s.model_info()?.clone();
            let embedded = s.embed(texts, req, out)?;
            out.emit(
                Event::new(SearchEvent::Embeddings)
                    .with("model", model.name)
                    .with("dimension", model.dimension)
                    .with("vectors", embedded.iter().map(|e| json!(e.vector)).collect::<Vec<_>>())
                    .with("tokens", embedded.iter().map(|e| e.tokens).collect::<Vec<_>>())
                    .with("truncated", embedded.iter().map(|e| e.truncated).collect::<Vec<_>>()),
            )?;
            Ok(())
        },
    );
    let document_args = || {
        common_args(json!({
            "documents": {"type": "array", "items": {"type": "object", "required": ["id"], "properties": {
                "id": {"type": "string"},
                "text": {"type": "string", "description": "Embedded with the server's model unless a vector is given."},
                "metadata": {"type": "object"},
                "vector": {"type": "array", "items": {"type": "number"}}
            }}}
        }))
    };
    for (name, summary, mode) in [
        ("add", "Stores new documents (an id that exists is an error); texts are embedded on the way in.", WriteMode::Add),
        ("upsert", "Stores documents, replacing those with the same ids.", WriteMode::Upsert),
    ] {
        let s = search.clone();
        server.handle(
            CommandSpec::new(name, summary)
                .args(document_args())
                .emits(&[SearchEvent::Progress, SearchEvent::Added]),
            move |req, out| s.write(req, out, mode),
        );
    }
    let s = search.clone();
    server.handle(
        CommandSpec::new("search", "The documents nearest a query text (or vector), best first; hybrid fuses full-text ranks in.")
            .args(common_args(json!({
                "query": {"type": "string", "description": "Text to search by meaning."},
                "vector": {"type": "array", "items": {"type": "number"}, "description": "A vector, instead of query."},
                "k": {"type": "integer", "minimum": 1, "maximum": MAX_RESULTS, "description": "How many hits (default 10)."},
                "filter": filter_schema(),
                "hybrid": {"type": "boolean", "description": "Fuse full-text ranks with the vector ranks (reciprocal-rank fusion)."}
            })))
            .emits(&[SearchEvent::Hits]),
        move |req, out| s.search(req, out),
    );
    let s = search.clone();
    server.handle(
        CommandSpec::new("get", "Documents by id and/or filter.")
            .args(common_args(json!({
                "ids": {"type": "array", "items": {"type": "string"}},
                "filter": filter_schema(),
                "limit": {"type": "integer", "minimum": 1, "maximum": MAX_RESULTS},
                "offset": {"type": "integer", "minimum": 0}
            })))
            .emits(&[SearchEvent::Documents]),
        move |req, out| {
            let collection = collection_of(req)?;
            let ids = ids_of(req)?;
            let limit = req
                .opt_u64("limit")?
                .unwrap_or(100)
                .clamp(1, MAX_RESULTS as u64) as usize;
            let offset = req.opt_u64("offset")?.unwrap_or(0) as usize;
            let documents = s
                .store()?
                .get(
                    &collection,
                    ids.as_deref(),
                    req.get("filter").filter(|f| !f.is_null()),
                    limit,
                    offset,
                )
                .map_err(store_error)?;
            out.emit(
                Event::new(SearchEvent::Documents).with(
                    "documents",
                    documents
                        .iter()
                        .map(|d| json!({"id": d.id, "text": d.text, "metadata": d.metadata}))
                        .collect::<Vec<_>>(),
                ),
            )?;
            Ok(())
        },
    );
    let s = search.clone();
    server.handle(
        CommandSpec::new("delete", "Deletes documents by id and/or filter.")
            .args(common_args(json!({
                "ids": {"type": "array", "items": {"type": "string"}},
                "filter": filter_schema()
            })))
            .emits(&[SearchEvent::Deleted]),
        move |req, out| {
            let collection = collection_of(req)?;
            let ids = ids_of(req)?;
            let filter = req.get("filter").filter(|f| !f.is_null());
            if ids.is_none() && filter.is_none() {
                return Err(ToolError::invalid(
                    "delete: give ids or a filter (collections drop removes a whole collection)",
                ));
            }
            let gone = s
                .store()?
                .delete(&collection, ids.as_deref(), filter)
                .map_err(store_error)?;
            out.emit(Event::new(SearchEvent::Deleted).with("deleted", gone))?;
            Ok(())
        },
    );
    let s = search.clone();
    server.handle(
        CommandSpec::new(
            "count",
            "How many documents a collection holds (that pass a filter).",
        )
        .args(common_args(json!({"filter": filter_schema()})))
        .emits(&[SearchEvent::Count]),
        move |req, out| {
            let collection = collection_of(req)?;
            let count = s
                .store()?
                .count(&collection, req.get("filter").filter(|f| !f.is_null()))
                .map_err(store_error)?;
            out.emit(Event::new(SearchEvent::Count).with("count", count))?;
            Ok(())
        },
    );
    let s = search.clone();
    server.handle(
        CommandSpec::new("index", "Indexes a folder's text files (binaries and hidden entries skipped), cut into passages, with progress.")
            .args(common_args(json!({
                "dir": {"type": "string", "description": "An absolute path on the server's machine."},
                "passage_chars": {"type": "integer", "minimum": 100, "maximum": 100000, "description": "The longest passage, in bytes (default 1000)."}
            })))
            .emits(&[SearchEvent::Progress, SearchEvent::Indexed]),
        move |req, out| s.index(req, out),
    );
    server.handle(
        CommandSpec::new("collections", "Lists collections, or creates or drops one.")
            .args(json!({"type": "object", "properties": {
                "action": {"enum": ["list", "create", "drop"], "description": "Default list."},
                "name": {"type": "string"},
                "metric": {"enum": ["cosine", "dot", "l2"], "description": "create: how closeness is measured (default cosine)."},
                "dimension": {"type": "integer", "minimum": 1, "maximum": 65536, "description": "create: for vectors you bring (default: the model's)."}
            }}))
            .emits(&[SearchEvent::Collections]),
        move |req, out| search.collections(req, out),
    );
}
