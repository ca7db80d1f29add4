//! The vector store behind one interface ([`VectorStore`]), so that another engine can stand
//! in for the embedded one: [`SqliteStore`] keeps everything in one SQLite file (WAL, every
//! write committed with `synchronous=FULL` before it is acknowledged), full-text search in
//! FTS5, and each collection's vectors mirrored in memory for exact search ([`index`]).

pub mod filter;
pub mod index;
mod sqlite;

use serde_json::{Map, Value};

pub use index::Metric;
pub use sqlite::SqliteStore;

/// A collection as listed.
#[derive(Debug, Clone, PartialEq)]
pub struct CollectionInfo {
    /// Its name.
    pub name: String,
    /// The embedding model its vectors come from.
    pub model: String,
    /// How closeness is measured.
    pub metric: Metric,
    /// The vectors' length.
    pub dimension: usize,
    /// How many documents it holds.
    pub count: usize,
}

/// A document on its way in.
#[derive(Debug, Clone)]
pub struct NewDocument {
    /// Its id, unique in its collection.
    pub id: String,
    /// Its text, if it has one (full-text search reads it).
    pub text: Option<String>,
    /// Its metadata: a JSON object.
    pub metadata: Map<String, Value>,
    /// Its vector.
    pub vector: Vec<f32>,
}

/// A stored document.
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    /// Its id.
    pub id: String,
    /// Its text.
    pub text: Option<String>,
    /// Its metadata.
    pub metadata: Value,
}

/// A search result: a document and how close it is (higher is closer).
#[derive(Debug, Clone, PartialEq)]
pub struct Hit {
    /// The document.
    pub document: Document,
    /// Its score under the collection's metric (or the text rank, for full-text search).
    pub score: f32,
}

/// Whether a write may replace documents that exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteMode {
    /// New ids only: an existing id is an error and nothing is written.
    Add,
    /// Insert or replace.
    Upsert,
}

/// What can go wrong, each saying what to do.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No collection of that name.
    #[error("no collection named '{0}'; list them with collections, or create it")]
    NoCollection(String),
    /// A collection of that name exists.
    #[error("a collection named '{0}' exists already")]
    Exists(String),
    /// `add` of ids that exist (or repeat within the request).
    #[error("ids already present: {}; use upsert to replace documents", .0.join(", "))]
    Duplicate(Vec<String>),
    /// A vector of the wrong length.
    #[error("a vector of {got} numbers given to a collection of dimension {expected}")]
    Dimension {
        /// The collection's dimension.
        expected: usize,
        /// The vector's length.
        got: usize,
    },
    /// A malformed request (a filter, a name).
    #[error("{0}")]
    Invalid(String),
    /// The database failed (corrupt, read-only, full, locked).
    #[error("the database failed: {0}")]
    Database(String),
}

/// A store of collections of documents with vectors.
pub trait VectorStore: Send + Sync {
    /// Every collection.
    fn collections(&self) -> Result<Vec<CollectionInfo>, StoreError>;
    /// One collection.
    fn collection(&self, name: &str) -> Result<CollectionInfo, StoreError>;
    /// Makes a collection.
    fn create(
        &self,
        name: &str,
        model: &str,
        metric: Metric,
        dimension: usize,
    ) -> Result<CollectionInfo, StoreError>;
    /// Drops a collection and its documents; returns how many documents went.
    fn drop_collection(&self, name: &str) -> Result<usize, StoreError>;
    /// Writes documents in one transaction: all or none, durable when it returns.
    fn write(
        &self,
        collection: &str,
        documents: Vec<NewDocument>,
        mode: WriteMode,
    ) -> Result<usize, StoreError>;
    /// Deletes the documents with these ids (all, if `None`) that pass `filter`.
    fn delete(
        &self,
        collection: &str,
        ids: Option<&[String]>,
        filter: Option<&Value>,
    ) -> Result<usize, StoreError>;
    /// Reads documents by id and/or filter.
    fn get(
        &self,
        collection: &str,
        ids: Option<&[String]>,
        filter: Option<&Value>,
        limit: usize,
        offset: usize,
    ) -> Result<Vec<Document>, StoreError>;
    /// How many documents pass `filter`.
    fn count(&self, collection: &str, filter: Option<&Value>) -> Result<usize, StoreError>;
    /// The `k` documents nearest to `vector` among those passing `filter`, best first.
    fn search(
        &self,
        collection: &str,
        vector: &[f32],
        k: usize,
        filter: Option<&Value>,
    ) -> Result<Vec<Hit>, StoreError>;
    /// The `k` documents whose text best matches `query` (full-text), best first.
    fn text_search(
        &self,
        collection: &str,
        query: &str,
        k: usize,
        filter: Option<&Value>,
    ) -> Result<Vec<Hit>, StoreError>;
}
