//! Running a whole query text: parse, bind the environment, stream rows.

use std::sync::{Arc, Mutex};

use futures::stream::BoxStream;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::eval::engine::{Context, Host, LogLine, NoHost, QueryInfo};
use crate::eval::query::run_program;
use crate::eval::registry::Registry;
use crate::eval::scope::{Binding, Scope};
use crate::eval::value::{Row, Value};
use crate::syntax::parser::{parse, ParseError};

/// Everything needed to run queries.
#[derive(Clone)]
pub struct Runner {
    pub registry: Arc<Registry>,
    pub host: Arc<dyn Host>,
}

impl Default for Runner {
    fn default() -> Self {
        Self {
            registry: Arc::new(Registry::builtin()),
            host: Arc::new(NoHost),
        }
    }
}

impl Runner {
    /// A runner over a host with the built-in registry.
    pub fn new(host: Arc<dyn Host>) -> Self {
        Self {
            registry: Arc::new(Registry::builtin()),
            host,
        }
    }

    /// Parses `query` and streams its rows; `env` is bound as variables first; log lines go
    /// to `log`; `cancel` stops event plugins.
    pub fn run(
        &self,
        query: &str,
        env: Vec<(String, Value)>,
        info: QueryInfo,
        cancel: CancellationToken,
        log: crate::eval::engine::LogSink,
    ) -> Result<BoxStream<'static, Row>, ParseError> {
        let program = Arc::new(parse(query)?);
        let ctx = Context::new(self.registry.clone(), self.host.clone(), info, cancel, log);
        let scope = Scope::root(ctx);
        for (k, v) in env {
            scope.set(&k, Binding::Value(v));
        }
        Ok(run_program(program, scope))
    }

    /// Runs a query to its end, collecting rows and log lines (for tests and `collect`).
    pub async fn collect(&self, query: &str) -> Result<(Vec<Row>, Vec<LogLine>), ParseError> {
        let logs = Arc::new(Mutex::new(Vec::new()));
        let sink = logs.clone();
        let rows = self.run(
            query,
            Vec::new(),
            QueryInfo::default(),
            CancellationToken::new(),
            Arc::new(move |l| sink.lock().expect("log lines").push(l)),
        )?;
        let rows: Vec<Row> = rows.collect().await;
        let logs = logs.lock().expect("log lines").clone();
        Ok((rows, logs))
    }
}
