//! The `sql` agent: one query against a database reached through a shared,
//! bounded sqlx pool, its rows written as JSON.
//!
//! ```yaml
//!   spend:
//!     kind: sql
//!     database: sqlite://data/usage.db      # or postgres://…; a relative SQLite path is the pipeline's folder's
//!     query: SELECT team, SUM(cost_usd) AS spend FROM calls WHERE model = ? GROUP BY team
//!     params: [model]                       # reads bound in order (`?` for SQLite, `$1…` for PostgreSQL)
//!     one: false                            # true: the first row as an object (null if none)
//!     reads: [model]
//!     writes: [spend_by_team]               # an array of row objects
//! ```
//!
//! Every `sql` agent of the process that names the same database shares one
//! pool (at most 4 connections), opened on first use and checked before
//! reuse: never a connection per call.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use braid_core::AgentConfig;
use braid_core::agent::{Agent, AgentError, AgentInput, Writes};
use serde_json::{Value, json};
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Column, Row};

/// Adds `sql` to `kinds`.
pub fn register(kinds: &mut braid_core::AgentKinds) {
    kinds.kind("sql", Arc::new(build));
}

/// See the [module docs](self).
#[derive(Debug)]
pub struct SqlAgent {
    url: String,
    query: String,
    params: Vec<String>,
    write: String,
    one: bool,
}

const KEYS: &[&str] = &["database", "query", "params", "one"];

/// The `sql` kind's keys for the pipeline file's JSON Schema (written by
/// hand: [`build`] reads its settings from a map, with no struct to derive
/// from; a test checks the keys against the ones it takes).
pub fn schema() -> braid_core::schema::KindSchema {
    braid_core::schema::KindSchema::new(
        "sql",
        "Runs one query and writes its rows (an array of objects) to its one write.",
    )
    .required_key(
        "database",
        "sqlite://PATH (relative to the pipeline's folder) or postgres://…; agents naming the same database share one pool.",
        json!({"type": "string"}),
    )
    .required_key("query", "The SQL query.", json!({"type": "string"}))
    .key(
        "params",
        "Read fields bound to the query's parameters, in order (`?` for SQLite, `$1`… for PostgreSQL).",
        json!({"type": "array", "items": {"type": "string"}}),
    )
    .key(
        "one",
        "`true`: write the first row as an object (null if none) instead of all rows.",
        json!({"type": "boolean"}),
    )
}

/// Builds a `sql` agent from its settings (the kind's factory).
pub fn build(config: &AgentConfig<'_>) -> Result<Arc<dyn Agent>, String> {
    let settings = config.settings;
    if let Some(unknown) = settings.keys().find(|k| !KEYS.contains(&k.as_str())) {
        return Err(format!(
            "unknown key `{unknown}` for a `sql` agent; expected one of: {}",
            KEYS.join(", ")
        ));
    }
    let database = settings
        .get("database")
        .and_then(Value::as_str)
        .ok_or("a `sql` agent needs `database: sqlite://PATH` or `postgres://…`")?;
    let url = match database.strip_prefix("sqlite://") {
        Some(path) if !path.starts_with('/') => {
            format!("sqlite://{}", config.dir.join(path).display())
        }
        _ => database.to_owned(),
    };
    if !url.starts_with("sqlite://") && !url.starts_with("postgres") {
        return Err(format!(
            "`database` must be sqlite:// or postgres://, not `{}`",
            crate::mask_password(database)
        ));
    }
    let query = settings
        .get("query")
        .and_then(Value::as_str)
        .ok_or("a `sql` agent needs `query: SQL`")?
        .to_owned();
    let params: Vec<String> = match settings.get("params") {
        None => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| v.as_str().map(str::to_owned))
            .collect::<Option<_>>()
            .ok_or("`params` must list field names")?,
        Some(_) => return Err("`params` must list field names".to_owned()),
    };
    let reads: Vec<&str> = config
        .reads
        .iter()
        .map(|r| r.trim_end_matches('?'))
        .collect();
    if let Some(missing) = params.iter().find(|p| !reads.contains(&p.as_str())) {
        return Err(format!(
            "`params` names `{missing}`, which the agent does not read"
        ));
    }
    if config.writes.len() != 1 {
        return Err(format!(
            "a `sql` agent writes its rows to exactly one field; it declares {}",
            config.writes.len()
        ));
    }
    Ok(Arc::new(SqlAgent {
        url,
        query,
        params,
        write: config.writes[0].clone(),
        one: settings
            .get("one")
            .and_then(Value::as_bool)
            .unwrap_or(false),
    }))
}

/// One pool per database URL, shared by every `sql` agent of the process.
async fn pool(url: &str) -> Result<AnyPool, sqlx::Error> {
    static POOLS: OnceLock<Mutex<HashMap<String, AnyPool>>> = OnceLock::new();
    let pools = POOLS.get_or_init(Default::default);
    if let Some(pool) = pools.lock().unwrap_or_else(|e| e.into_inner()).get(url) {
        return Ok(pool.clone());
    }
    sqlx::any::install_default_drivers();
    let pool = AnyPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(Duration::from_secs(10))
        .test_before_acquire(true)
        .connect(url)
        .await?;
    let mut pools = pools.lock().unwrap_or_else(|e| e.into_inner());
    Ok(pools.entry(url.to_owned()).or_insert(pool).clone())
}

/// A column's value as JSON, whatever its SQL type.
fn cell(row: &AnyRow, index: usize) -> Value {
    if let Ok(v) = row.try_get::<Option<i64>, _>(index) {
        return json!(v);
    }
    if let Ok(v) = row.try_get::<Option<f64>, _>(index) {
        return json!(v);
    }
    if let Ok(v) = row.try_get::<Option<String>, _>(index) {
        return json!(v);
    }
    if let Ok(v) = row.try_get::<Option<bool>, _>(index) {
        return json!(v);
    }
    Value::Null
}

#[async_trait::async_trait]
impl Agent for SqlAgent {
    async fn call(&self, input: &AgentInput) -> Result<Writes, AgentError> {
        let pool = pool(&self.url).await.map_err(|e| {
            AgentError::Other(format!(
                "cannot open {}: {e}",
                crate::mask_password(&self.url)
            ))
        })?;
        let mut query = sqlx::query(sqlx::AssertSqlSafe(self.query.clone()));
        for name in &self.params {
            query = match input.reads.get(name) {
                Some(Value::String(s)) => query.bind(s.clone()),
                Some(Value::Bool(b)) => query.bind(*b),
                Some(Value::Number(n)) if n.is_i64() => query.bind(n.as_i64()),
                Some(Value::Number(n)) => query.bind(n.as_f64()),
                Some(Value::Null) | None => query.bind(Option::<String>::None),
                Some(other) => query.bind(other.to_string()),
            };
        }
        let mut connection = crate::acquire(&pool, "sql").await.map_err(|e| {
            AgentError::Other(format!(
                "no connection to {}: {e}",
                crate::mask_password(&self.url)
            ))
        })?;
        let rows = query
            .fetch_all(&mut *connection)
            .await
            .map_err(|e| AgentError::Other(format!("the query failed: {e}")))?;
        let objects: Vec<Value> = rows
            .iter()
            .map(|row| {
                Value::Object(
                    row.columns()
                        .iter()
                        .enumerate()
                        .map(|(i, c)| (c.name().to_owned(), cell(row, i)))
                        .collect(),
                )
            })
            .collect();
        let value = if self.one {
            objects.into_iter().next().unwrap_or(Value::Null)
        } else {
            Value::Array(objects)
        };
        let mut out = Writes::new();
        out.insert(self.write.clone(), value);
        Ok(out)
    }
}

#[cfg(test)]
mod schema_tests {
    #[test]
    fn the_schema_has_the_keys_the_agent_takes() {
        let schema = super::schema();
        assert_eq!(schema.key_names().collect::<Vec<_>>(), super::KEYS);
    }
}
