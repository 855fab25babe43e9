//! Test stores, so the storage tests run on SQLite and on PostgreSQL with one body each (feature
//! `test-support`; the crate's own unit tests have it too).
//!
//! A [`TestStore`] is a fresh, empty store for one test: SQLite in a temporary folder, or a PostgreSQL
//! schema of its own (`CREATE SCHEMA` with a random name in the database `STREAMHOUSE_TEST_POSTGRES`
//! points at, made the store's only one by `search_path` in its URL), dropped with the store. A schema
//! costs a few ms where `CREATE DATABASE` costs half a second (it copies and syncs a template). Without that variable the
//! PostgreSQL variants fail, with a message saying how to start a server; they never skip, so a run
//! that could not test PostgreSQL cannot pass for one that did. The test command (scripts/test.sh)
//! starts one; by hand: `eval "$(scripts/postgres/start.sh)"`, or run only the SQLite variants with
//! `cargo test -p streamhouse-storage -- sqlite`.
//!
//! Everything here that talks to PostgreSQL runs on a thread of its own, so it may be called from
//! async tests (see the blocking rule in `metadata`).

use std::path::Path;
use std::sync::Arc;

use super::{MetadataLocation, MetadataStore, SQLITE_FILE};
use crate::{StorageConfig, StorageError};

/// The environment variable naming the test server: a `postgres://` URL of a database the user may
/// create schemas in (scripts/postgres/start.sh prints it).
pub const POSTGRES_ENV: &str = "STREAMHOUSE_TEST_POSTGRES";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A fresh store for one test.
pub struct TestStore {
    backend: Backend,
    location: MetadataLocation,
    /// SQLite: the folder holding the database (unit tests open the store themselves).
    dir: tempfile::TempDir,
    /// PostgreSQL: the schema made for this test, dropped with the store.
    schema: Option<TestSchema>,
}

impl TestStore {
    pub fn new(backend: Backend) -> TestStore {
        match backend {
            Backend::Sqlite => TestStore::sqlite(),
            Backend::Postgres => TestStore::postgres(),
        }
    }

    pub fn sqlite() -> TestStore {
        TestStore {
            backend: Backend::Sqlite,
            location: MetadataLocation::Sqlite,
            dir: tempfile::tempdir().expect("temporary folder"),
            schema: None,
        }
    }

    /// A new schema in the database of [`POSTGRES_ENV`]; panics (fails the test) when it is unset.
    pub fn postgres() -> TestStore {
        let Ok(server) = std::env::var(POSTGRES_ENV) else {
            panic!(
                "{POSTGRES_ENV} is not set: this PostgreSQL variant of a storage test needs a server. \
                 Start one with `eval \"$(scripts/postgres/start.sh)\"` (it installs Debian's \
                 postgresql if missing), or run only the SQLite variants: \
                 `cargo test -p streamhouse-storage -- sqlite`"
            );
        };
        let schema = TestSchema::create(&server);
        TestStore {
            backend: Backend::Postgres,
            location: MetadataLocation::Postgres(schema.url.clone()),
            dir: tempfile::tempdir().expect("temporary folder"),
            schema: Some(schema),
        }
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Where the store is, for `StorageConfig::metadata`. (SQLite: the data folder's metadata.db, so
    /// a config's data folder decides which SQLite store it opens.)
    pub fn location(&self) -> MetadataLocation {
        self.location.clone()
    }

    /// A storage config with the data folder `data_dir` and this store.
    pub fn config(&self, data_dir: impl Into<std::path::PathBuf>) -> StorageConfig {
        let mut c = StorageConfig::new(data_dir);
        c.metadata = self.location();
        c
    }

    /// Opens this store (its folder's metadata.db for SQLite) through [`super::open`], as the engine
    /// does. Blocks: call from a plain thread, or use [`TestStore::blocking`].
    pub fn try_open(&self) -> Result<Arc<dyn MetadataStore>, StorageError> {
        super::open(&self.location, self.dir.path(), true)
    }

    pub fn open(&self) -> Arc<dyn MetadataStore> {
        self.try_open().expect("open the test store")
    }

    /// Opens the store a storage config with data folder `data_dir` uses, and runs `f` with it on a
    /// thread of its own (callable from async tests).
    pub fn blocking<T: Send>(
        &self,
        data_dir: &Path,
        f: impl FnOnce(&dyn MetadataStore) -> T + Send,
    ) -> T {
        let location = self.location();
        off_runtime(move || {
            let store = super::open(&location, data_dir, true).expect("open the test store");
            f(store.as_ref())
        })
    }

    /// The schema version the store records.
    pub fn schema_version(&self) -> i64 {
        match &self.schema {
            None => rusqlite::Connection::open(self.dir.path().join(SQLITE_FILE))
                .and_then(|c| c.query_row("SELECT version FROM schema_version", [], |r| r.get(0)))
                .expect("read the SQLite schema version"),
            Some(db) => {
                let url = db.url.clone();
                off_runtime(move || {
                    let mut c = postgres::Client::connect(&url, postgres::NoTls).expect("connect");
                    let v: i32 = c
                        .query_one("SELECT version FROM schema_version", &[])
                        .expect("read the PostgreSQL schema version")
                        .get(0);
                    i64::from(v)
                })
            }
        }
    }

    /// Overwrites the recorded schema version (to test what a newer schema does to an older broker).
    pub fn set_schema_version(&self, version: i64) {
        match &self.schema {
            None => {
                rusqlite::Connection::open(self.dir.path().join(SQLITE_FILE))
                    .and_then(|c| c.execute("UPDATE schema_version SET version = ?1", [version]))
                    .expect("set the SQLite schema version");
            }
            Some(db) => {
                let url = db.url.clone();
                off_runtime(move || {
                    let mut c = postgres::Client::connect(&url, postgres::NoTls).expect("connect");
                    c.execute(
                        "UPDATE schema_version SET version = $1",
                        &[&(version as i32)],
                    )
                    .expect("set the PostgreSQL schema version");
                });
            }
        }
    }
}

/// Runs `f` on a thread of its own and waits for it: blocking store calls from async tests.
pub fn off_runtime<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| match s.spawn(f).join() {
        Ok(v) => v,
        Err(panic) => std::panic::resume_unwind(panic),
    })
}

/// A schema created for one test, dropped (with everything in it) when this is.
struct TestSchema {
    /// The database's URL as given, to drop the schema from.
    server: String,
    name: String,
    /// The URL the test's store uses: the database, with the schema as its only search path.
    url: String,
}

impl TestSchema {
    fn create(server: &str) -> TestSchema {
        let name = format!("sh_test_{}", uuid::Uuid::new_v4().simple());
        let mut url = url::Url::parse(server)
            .unwrap_or_else(|e| panic!("{POSTGRES_ENV} is not a URL ({e}): {server}"));
        // `-cname=value` without a space: the client percent-decodes the query, and a space would
        // come back as `+`.
        url.query_pairs_mut()
            .append_pair("options", &format!("-csearch_path={name}"));
        let (server, url) = (server.to_string(), url.to_string());
        let statement = format!("CREATE SCHEMA {name}");
        off_runtime(|| {
            let mut c = postgres::Client::connect(&server, postgres::NoTls).unwrap_or_else(|e| {
                panic!(
                    "cannot connect to {POSTGRES_ENV}={server}: {e} (is the server running? \
                     `eval \"$(scripts/postgres/start.sh)\"`)"
                )
            });
            c.batch_execute(&statement)
                .unwrap_or_else(|e| panic!("{statement}: {e}"));
        });
        TestSchema { server, name, url }
    }
}

impl Drop for TestSchema {
    fn drop(&mut self) {
        let statement = format!("DROP SCHEMA IF EXISTS {} CASCADE", self.name);
        let server = self.server.clone();
        // Not a panic while unwinding from a failed test: a schema left behind goes with the test
        // server (scripts/postgres/stop.sh --purge).
        let result = off_runtime(move || {
            postgres::Client::connect(&server, postgres::NoTls)
                .and_then(|mut c| c.batch_execute(&statement))
        });
        if let Err(e) = result {
            eprintln!("could not drop test schema {}: {e}", self.name);
        }
    }
}
