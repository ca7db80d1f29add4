//! [`VectorStore`] on one SQLite file: a writer and a reader connection in WAL mode (searches
//! read while a write commits), every write one transaction with `synchronous=FULL` (an
//! acknowledged write survives `kill -9` and power loss), FTS5 kept in step by triggers, JSON
//! metadata filtered with `json_extract`, and an exclusive lock file so that two servers never
//! share a database.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, RwLock};

use rusqlite::{params, params_from_iter, Connection, OptionalExtension};
use serde_json::Value;

use super::filter::SqlFilter;
use super::index::VectorIndex;
use super::{
    CollectionInfo, Document, Hit, Metric, NewDocument, StoreError, VectorStore, WriteMode,
};
use crate::lock;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS collections (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    model TEXT NOT NULL,
    metric TEXT NOT NULL,
    dimension INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS documents (
    collection INTEGER NOT NULL REFERENCES collections(id),
    id TEXT NOT NULL,
    text TEXT,
    metadata TEXT NOT NULL DEFAULT '{}',
    vector BLOB NOT NULL,
    UNIQUE (collection, id)
);
CREATE VIRTUAL TABLE IF NOT EXISTS documents_fts
    USING fts5(text, content='documents', content_rowid='rowid');
CREATE TRIGGER IF NOT EXISTS documents_ai AFTER INSERT ON documents BEGIN
    INSERT INTO documents_fts(rowid, text) VALUES (new.rowid, coalesce(new.text, ''));
END;
CREATE TRIGGER IF NOT EXISTS documents_ad AFTER DELETE ON documents BEGIN
    INSERT INTO documents_fts(documents_fts, rowid, text)
        VALUES ('delete', old.rowid, coalesce(old.text, ''));
END;
CREATE TRIGGER IF NOT EXISTS documents_au AFTER UPDATE ON documents BEGIN
    INSERT INTO documents_fts(documents_fts, rowid, text)
        VALUES ('delete', old.rowid, coalesce(old.text, ''));
    INSERT INTO documents_fts(rowid, text) VALUES (new.rowid, coalesce(new.text, ''));
END;
";

/// The store.
pub struct SqliteStore {
    writer: Mutex<Connection>,
    reader: Mutex<Connection>,
    /// Each collection's vectors, by collection id.
    indexes: RwLock<HashMap<i64, VectorIndex>>,
    /// Held while the store is open: one server per database.
    _lock: File,
}

fn db_error(e: rusqlite::Error) -> StoreError {
    StoreError::Database(explained(&e))
}

/// SQLite's message, with what to do for the failures a user can mend.
fn explained(e: &rusqlite::Error) -> String {
    use rusqlite::ErrorCode;
    let advice = match e.sqlite_error_code() {
        Some(ErrorCode::DiskFull) => {
            "the disk holding the database is full: free some space and send the request \
             again (nothing of the failed write was stored)"
        }
        Some(ErrorCode::ReadOnly) => {
            "the database file is read-only: make it writable, or give a writable --db"
        }
        Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase) => {
            "the file is damaged or not a search database: give another --db, or restore it \
             from a copy"
        }
        _ => return e.to_string(),
    };
    format!("{e}; {advice}")
}

fn to_blob(vector: &[f32]) -> Vec<u8> {
    vector.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn from_blob(blob: &[u8]) -> Vec<f32> {
    blob.chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

/// Takes `PATH.lock` for this process, or says who holds it.
fn lock_database(path: &Path) -> Result<File, StoreError> {
    let lock_path = PathBuf::from(format!("{}.lock", path.display()));
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock_path)
        .map_err(|e| {
            let advice = if e.kind() == std::io::ErrorKind::ReadOnlyFilesystem {
                "; the search server writes its database: give a --db on a writable disk"
            } else {
                ""
            };
            StoreError::Database(format!("cannot open {}: {e}{advice}", lock_path.display()))
        })?;
    // SAFETY: flock on a descriptor this function owns; it has no memory effects.
    let locked = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0;
    if !locked {
        let holder = std::fs::read_to_string(&lock_path).unwrap_or_default();
        return Err(StoreError::Database(format!(
            "{} is in use by another search server (pid {}); give this one another --db",
            path.display(),
            holder.trim()
        )));
    }
    file.set_len(0)
        .and_then(|()| write!(file, "{}", std::process::id()))
        .map_err(|e| StoreError::Database(format!("cannot write {}: {e}", lock_path.display())))?;
    Ok(file)
}

fn connect(path: &Path) -> Result<Connection, StoreError> {
    let connection = Connection::open(path).map_err(|e| {
        StoreError::Database(format!("cannot open {}: {}", path.display(), explained(&e)))
    })?;
    connection
        .execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA busy_timeout = 5000;",
        )
        .map_err(|e| StoreError::Database(format!("{}: {}", path.display(), explained(&e))))?;
    Ok(connection)
}

impl SqliteStore {
    /// Opens (or creates) the database at `path`, and loads every vector into memory.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| {
                StoreError::Database(format!("cannot create {}: {e}", dir.display()))
            })?;
        }
        let lock = lock_database(path)?;
        let writer = connect(path)?;
        writer.execute_batch(SCHEMA).map_err(|e| {
            StoreError::Database(format!(
                "{} cannot be used as a search database: {}",
                path.display(),
                explained(&e)
            ))
        })?;
        let reader = connect(path)?;
        let mut indexes = HashMap::new();
        {
            let mut collections = writer
                .prepare("SELECT id, metric, dimension FROM collections")
                .map_err(db_error)?;
            let rows = collections
                .query_map([], |r| Ok((r.get(0)?, r.get::<_, String>(1)?, r.get(2)?)))
                .map_err(db_error)?;
            for row in rows {
                let (id, metric, dimension): (i64, String, i64) = row.map_err(db_error)?;
                let dimension = dimension as usize;
                let metric = Metric::parse(&metric).map_err(StoreError::Database)?;
                indexes.insert(id, VectorIndex::new(dimension, metric));
            }
            let mut vectors = writer
                .prepare("SELECT collection, rowid, vector FROM documents")
                .map_err(db_error)?;
            let rows = vectors
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get::<_, Vec<u8>>(2)?)))
                .map_err(db_error)?;
            for row in rows {
                let (collection, rowid, blob): (i64, i64, Vec<u8>) = row.map_err(db_error)?;
                if let Some(index) = indexes.get_mut(&collection) {
                    index.put(rowid, &from_blob(&blob));
                }
            }
        }
        Ok(Self {
            writer: Mutex::new(writer),
            reader: Mutex::new(reader),
            indexes: RwLock::new(indexes),
            _lock: lock,
        })
    }

    /// The vector mirrors, to change (a poisoned lock is taken anyway: every change to them
    /// is one whole `put` or `remove`).
    fn indexes_mut(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<i64, VectorIndex>> {
        self.indexes.write().unwrap_or_else(|p| p.into_inner())
    }

    /// A collection's id and its settings.
    fn find(
        &self,
        connection: &Connection,
        name: &str,
    ) -> Result<(i64, Metric, usize, String), StoreError> {
        connection
            .query_row(
                "SELECT id, metric, dimension, model FROM collections WHERE name = ?",
                [name],
                |r| {
                    let dimension: i64 = r.get(2)?;
                    Ok((
                        r.get(0)?,
                        r.get::<_, String>(1)?,
                        dimension as usize,
                        r.get(3)?,
                    ))
                },
            )
            .optional()
            .map_err(db_error)?
            .ok_or_else(|| StoreError::NoCollection(name.into()))
            .and_then(|(id, metric, dimension, model)| {
                let metric = Metric::parse(&metric).map_err(StoreError::Database)?;
                Ok((id, metric, dimension, model))
            })
    }

    /// The rows of `collection` that pass `filter` (and have one of `ids`, if given).
    fn rows(
        collection: i64,
        ids: Option<&[String]>,
        filter: Option<&Value>,
        tail: &str,
    ) -> Result<(String, Vec<rusqlite::types::Value>), StoreError> {
        let filter = SqlFilter::parse(filter, "metadata").map_err(StoreError::Invalid)?;
        let mut sql = format!("collection = ? AND ({})", filter.condition);
        let mut params = vec![rusqlite::types::Value::Integer(collection)];
        params.extend(filter.params);
        if let Some(ids) = ids {
            sql += &format!(" AND id IN ({})", vec!["?"; ids.len()].join(", "));
            params.extend(ids.iter().cloned().map(rusqlite::types::Value::Text));
        }
        sql += tail;
        Ok((sql, params))
    }

    fn documents_where(
        connection: &Connection,
        condition: &str,
        params: Vec<rusqlite::types::Value>,
    ) -> Result<Vec<(i64, Document)>, StoreError> {
        let mut statement = connection
            .prepare(&format!(
                "SELECT rowid, id, text, metadata FROM documents WHERE {condition}"
            ))
            .map_err(db_error)?;
        let rows = statement
            .query_map(params_from_iter(params), |r| {
                let metadata: String = r.get(3)?;
                Ok((
                    r.get(0)?,
                    Document {
                        id: r.get(1)?,
                        text: r.get(2)?,
                        metadata: serde_json::from_str(&metadata).unwrap_or(Value::Null),
                    },
                ))
            })
            .map_err(db_error)?;
        rows.collect::<Result<_, _>>().map_err(db_error)
    }
}

impl VectorStore for SqliteStore {
    fn collections(&self) -> Result<Vec<CollectionInfo>, StoreError> {
        let connection = lock(&self.reader);
        let mut statement = connection
            .prepare(
                "SELECT c.name, c.model, c.metric, c.dimension,
                        (SELECT count(*) FROM documents d WHERE d.collection = c.id)
                 FROM collections c ORDER BY c.name",
            )
            .map_err(db_error)?;
        let rows = statement
            .query_map([], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get::<_, String>(2)?,
                    r.get(3)?,
                    r.get(4)?,
                ))
            })
            .map_err(db_error)?;
        rows.map(|row| {
            let (name, model, metric, dimension, count): (String, String, String, i64, i64) =
                row.map_err(db_error)?;
            Ok(CollectionInfo {
                name,
                model,
                metric: Metric::parse(&metric).map_err(StoreError::Database)?,
                dimension: dimension as usize,
                count: count as usize,
            })
        })
        .collect()
    }

    fn collection(&self, name: &str) -> Result<CollectionInfo, StoreError> {
        let connection = lock(&self.reader);
        let (id, metric, dimension, model) = self.find(&connection, name)?;
        let count: i64 = connection
            .query_row(
                "SELECT count(*) FROM documents WHERE collection = ?",
                [id],
                |r| r.get(0),
            )
            .map_err(db_error)?;
        let count = count as usize;
        Ok(CollectionInfo {
            name: name.into(),
            model,
            metric,
            dimension,
            count,
        })
    }

    fn create(
        &self,
        name: &str,
        model: &str,
        metric: Metric,
        dimension: usize,
    ) -> Result<CollectionInfo, StoreError> {
        if name.trim().is_empty() || name.len() > 200 {
            return Err(StoreError::Invalid(
                "a collection name is 1 to 200 characters".into(),
            ));
        }
        if !(1..=65_536).contains(&dimension) {
            return Err(StoreError::Invalid(format!(
                "a collection's dimension is 1 to 65536, got {dimension}"
            )));
        }
        let connection = lock(&self.writer);
        let inserted = connection.execute(
            "INSERT INTO collections (name, model, metric, dimension) VALUES (?, ?, ?, ?)
             ON CONFLICT (name) DO NOTHING",
            params![name, model, metric.as_str(), dimension as i64],
        );
        match inserted.map_err(db_error)? {
            0 => Err(StoreError::Exists(name.into())),
            _ => {
                let id = connection.last_insert_rowid();
                self.indexes_mut()
                    .insert(id, VectorIndex::new(dimension, metric));
                Ok(CollectionInfo {
                    name: name.into(),
                    model: model.into(),
                    metric,
                    dimension,
                    count: 0,
                })
            }
        }
    }

    fn drop_collection(&self, name: &str) -> Result<usize, StoreError> {
        let mut connection = lock(&self.writer);
        let (id, ..) = self.find(&connection, name)?;
        let tx = connection.transaction().map_err(db_error)?;
        let gone = tx
            .execute("DELETE FROM documents WHERE collection = ?", [id])
            .map_err(db_error)?;
        tx.execute("DELETE FROM collections WHERE id = ?", [id])
            .map_err(db_error)?;
        tx.commit().map_err(db_error)?;
        self.indexes_mut().remove(&id);
        Ok(gone)
    }

    fn write(
        &self,
        collection: &str,
        mut documents: Vec<NewDocument>,
        mode: WriteMode,
    ) -> Result<usize, StoreError> {
        let mut connection = lock(&self.writer);
        let (id, metric, dimension, _) = self.find(&connection, collection)?;
        let mut seen = HashSet::new();
        let mut repeated = Vec::new();
        for document in &mut documents {
            if document.vector.len() != dimension {
                return Err(StoreError::Dimension {
                    expected: dimension,
                    got: document.vector.len(),
                });
            }
            if document.vector.iter().any(|x| !x.is_finite()) {
                return Err(StoreError::Invalid(format!(
                    "document '{}': its vector holds a NaN or an infinity",
                    document.id
                )));
            }
            metric.prepare(&mut document.vector);
            if !seen.insert(document.id.clone()) {
                repeated.push(document.id.clone());
            }
        }
        if mode == WriteMode::Add && repeated.is_empty() {
            let ids: Vec<String> = seen.into_iter().collect();
            for chunk in ids.chunks(500) {
                let (condition, params) = Self::rows(id, Some(chunk), None, "")?;
                repeated.extend(
                    Self::documents_where(&connection, &condition, params)?
                        .into_iter()
                        .map(|(_, d)| d.id),
                );
            }
        }
        if !repeated.is_empty() {
            repeated.sort();
            repeated.dedup();
            return Err(StoreError::Duplicate(repeated));
        }
        let tx = connection.transaction().map_err(db_error)?;
        let mut written = Vec::with_capacity(documents.len());
        {
            let mut insert = tx
                .prepare(
                    "INSERT INTO documents (collection, id, text, metadata, vector)
                     VALUES (?, ?, ?, ?, ?)
                     ON CONFLICT (collection, id) DO UPDATE SET
                        text = excluded.text, metadata = excluded.metadata,
                        vector = excluded.vector
                     RETURNING rowid",
                )
                .map_err(db_error)?;
            for document in &documents {
                let metadata = Value::Object(document.metadata.clone()).to_string();
                let rowid: i64 = insert
                    .query_row(
                        params![
                            id,
                            document.id,
                            document.text,
                            metadata,
                            to_blob(&document.vector)
                        ],
                        |r| r.get(0),
                    )
                    .map_err(db_error)?;
                written.push(rowid);
            }
        }
        tx.commit().map_err(db_error)?;
        let mut indexes = self.indexes_mut();
        if let Some(index) = indexes.get_mut(&id) {
            for (rowid, document) in written.iter().zip(&documents) {
                index.put(*rowid, &document.vector);
            }
        }
        Ok(documents.len())
    }

    fn delete(
        &self,
        collection: &str,
        ids: Option<&[String]>,
        filter: Option<&Value>,
    ) -> Result<usize, StoreError> {
        let mut connection = lock(&self.writer);
        let (id, ..) = self.find(&connection, collection)?;
        let (condition, params) = Self::rows(id, ids, filter, "")?;
        let tx = connection.transaction().map_err(db_error)?;
        let rowids: Vec<i64> = {
            let mut statement = tx
                .prepare(&format!(
                    "DELETE FROM documents WHERE {condition} RETURNING rowid"
                ))
                .map_err(db_error)?;
            let rows = statement
                .query_map(params_from_iter(params), |r| r.get(0))
                .map_err(db_error)?;
            rows.collect::<Result<_, _>>().map_err(db_error)?
        };
        tx.commit().map_err(db_error)?;
        let mut indexes = self.indexes_mut();
        if let Some(index) = indexes.get_mut(&id) {
            rowids.iter().for_each(|row| index.remove(*row));
        }
        Ok(rowids.len())
    }

    fn get(
        &self,
        collection: &str,
        ids: Option<&[String]>,
        filter: Option<&Value>,
        limit: usize,
        offset: usize,
    ) -> Result<Vec<Document>, StoreError> {
        let connection = lock(&self.reader);
        let (id, ..) = self.find(&connection, collection)?;
        let tail = format!(" ORDER BY rowid LIMIT {limit} OFFSET {offset}");
        let (condition, params) = Self::rows(id, ids, filter, &tail)?;
        Ok(Self::documents_where(&connection, &condition, params)?
            .into_iter()
            .map(|(_, d)| d)
            .collect())
    }

    fn count(&self, collection: &str, filter: Option<&Value>) -> Result<usize, StoreError> {
        let connection = lock(&self.reader);
        let (id, ..) = self.find(&connection, collection)?;
        let (condition, params) = Self::rows(id, None, filter, "")?;
        let count: i64 = connection
            .query_row(
                &format!("SELECT count(*) FROM documents WHERE {condition}"),
                params_from_iter(params),
                |r| r.get(0),
            )
            .map_err(db_error)?;
        Ok(count as usize)
    }

    fn search(
        &self,
        collection: &str,
        vector: &[f32],
        k: usize,
        filter: Option<&Value>,
    ) -> Result<Vec<Hit>, StoreError> {
        let connection = lock(&self.reader);
        let (id, metric, dimension, _) = self.find(&connection, collection)?;
        if vector.len() != dimension {
            return Err(StoreError::Dimension {
                expected: dimension,
                got: vector.len(),
            });
        }
        let mut query = vector.to_vec();
        metric.prepare(&mut query);
        let allowed: Option<HashSet<i64>> = match filter {
            None | Some(Value::Null) => None,
            Some(_) => {
                let (condition, params) = Self::rows(id, None, filter, "")?;
                let mut statement = connection
                    .prepare(&format!("SELECT rowid FROM documents WHERE {condition}"))
                    .map_err(db_error)?;
                let rows = statement
                    .query_map(params_from_iter(params), |r| r.get(0))
                    .map_err(db_error)?;
                Some(rows.collect::<Result<_, _>>().map_err(db_error)?)
            }
        };
        let nearest = {
            let indexes = self.indexes.read().unwrap_or_else(|p| p.into_inner());
            match indexes.get(&id) {
                Some(index) => index.nearest(&query, k, allowed.as_ref()),
                None => Vec::new(),
            }
        };
        if nearest.is_empty() {
            return Ok(Vec::new());
        }
        let marks = vec!["?"; nearest.len()].join(", ");
        let params = nearest
            .iter()
            .map(|(row, _)| rusqlite::types::Value::Integer(*row));
        let mut found: HashMap<i64, Document> = Self::documents_where(
            &connection,
            &format!("rowid IN ({marks})"),
            params.collect(),
        )?
        .into_iter()
        .collect();
        Ok(nearest
            .into_iter()
            .filter_map(|(row, score)| found.remove(&row).map(|document| Hit { document, score }))
            .collect())
    }

    fn text_search(
        &self,
        collection: &str,
        query: &str,
        k: usize,
        filter: Option<&Value>,
    ) -> Result<Vec<Hit>, StoreError> {
        // Each word quoted (so FTS5's own syntax in a query is just text), any word matching.
        let words: Vec<String> = query
            .split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty())
            .map(|w| format!("\"{w}\""))
            .collect();
        if words.is_empty() {
            return Ok(Vec::new());
        }
        let connection = lock(&self.reader);
        let (id, ..) = self.find(&connection, collection)?;
        let filter = SqlFilter::parse(filter, "d.metadata").map_err(StoreError::Invalid)?;
        let sql = format!(
            "SELECT d.id, d.text, d.metadata, bm25(documents_fts) AS rank
             FROM documents_fts JOIN documents d ON d.rowid = documents_fts.rowid
             WHERE documents_fts MATCH ? AND d.collection = ? AND ({})
             ORDER BY rank LIMIT {k}",
            filter.condition
        );
        let mut params = vec![
            rusqlite::types::Value::Text(words.join(" OR ")),
            rusqlite::types::Value::Integer(id),
        ];
        params.extend(filter.params);
        let mut statement = connection.prepare(&sql).map_err(db_error)?;
        let rows = statement
            .query_map(params_from_iter(params), |r| {
                let metadata: String = r.get(2)?;
                let rank: f64 = r.get(3)?;
                Ok(Hit {
                    document: Document {
                        id: r.get(0)?,
                        text: r.get(1)?,
                        metadata: serde_json::from_str(&metadata).unwrap_or(Value::Null),
                    },
                    score: -rank as f32,
                })
            })
            .map_err(db_error)?;
        rows.collect::<Result<_, _>>().map_err(db_error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn doc(id: &str, text: &str, metadata: Value, vector: Vec<f32>) -> NewDocument {
        NewDocument {
            id: id.into(),
            text: Some(text.into()),
            metadata: metadata.as_object().cloned().unwrap_or_default(),
            vector,
        }
    }

    #[test]
    fn writes_searches_filters_and_survives_a_reopen() {
        let dir = std::env::temp_dir().join(format!("cpipe-store-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("search.db");
        {
            let store = SqliteStore::open(&path).unwrap();
            store.create("notes", "m", Metric::Cosine, 2).unwrap();
            assert!(matches!(
                store.create("notes", "m", Metric::Cosine, 2),
                Err(StoreError::Exists(_))
            ));
            store
                .write(
                    "notes",
                    vec![
                        doc(
                            "a",
                            "red apples",
                            json!({"kind": "fruit", "n": 1}),
                            vec![1.0, 0.0],
                        ),
                        doc(
                            "b",
                            "green pears",
                            json!({"kind": "fruit", "n": 2}),
                            vec![0.8, 0.6],
                        ),
                        doc(
                            "c",
                            "blue cars",
                            json!({"kind": "car", "n": 3}),
                            vec![0.0, 1.0],
                        ),
                    ],
                    WriteMode::Add,
                )
                .unwrap();
            let again = store.write(
                "notes",
                vec![doc("a", "x", json!({}), vec![1.0, 0.0])],
                WriteMode::Add,
            );
            assert!(matches!(again, Err(StoreError::Duplicate(ids)) if ids == ["a"]));
            let wrong = store.write(
                "notes",
                vec![doc("d", "x", json!({}), vec![1.0])],
                WriteMode::Add,
            );
            assert!(matches!(
                wrong,
                Err(StoreError::Dimension {
                    expected: 2,
                    got: 1
                })
            ));
            let hits = store.search("notes", &[0.0, 1.0], 2, None).unwrap();
            assert_eq!(hits[0].document.id, "c");
            let fruit = json!({"kind": "fruit"});
            let hits = store.search("notes", &[0.0, 1.0], 5, Some(&fruit)).unwrap();
            assert_eq!(
                hits.iter()
                    .map(|h| h.document.id.as_str())
                    .collect::<Vec<_>>(),
                ["b", "a"]
            );
            assert_eq!(
                store
                    .count("notes", Some(&json!({"n": {"$gte": 2}})))
                    .unwrap(),
                2
            );
            let text = store.text_search("notes", "pears OR \"", 5, None).unwrap();
            assert_eq!(text[0].document.id, "b");
            let filtered = store
                .text_search("notes", "cars pears", 5, Some(&json!({"kind": "car"})))
                .unwrap();
            assert_eq!(filtered.len(), 1);
            assert_eq!(filtered[0].document.id, "c");
            assert_eq!(store.delete("notes", Some(&["c".into()]), None).unwrap(), 1);
            // A second server on the same database is refused.
            let second = SqliteStore::open(&path).err().unwrap().to_string();
            assert!(
                second.contains("in use by another search server"),
                "{second}"
            );
        }
        let store = SqliteStore::open(&path).unwrap();
        assert_eq!(store.collection("notes").unwrap().count, 2);
        assert_eq!(
            store.search("notes", &[0.0, 1.0], 1, None).unwrap()[0]
                .document
                .id,
            "b"
        );
        assert_eq!(store.drop_collection("notes").unwrap(), 2);
        assert!(matches!(
            store.collection("notes"),
            Err(StoreError::NoCollection(_))
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
