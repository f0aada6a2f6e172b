//! The built-in functions ([`functions`]) and plugins ([`plugins`]) of SPEC-VQL, and the
//! registry holding all of them ([`Registry::builtin`]): the builtins fill the registry,
//! the registry knows none of them.

pub mod automation;
pub mod collections;
pub mod functions;
pub mod permissions;
pub mod plugins;

use futures::stream::{BoxStream, StreamExt};

use crate::eval::engine::{Context, HostResult};
use crate::eval::registry::Registry;
use crate::eval::value::Row;

/// A host's answer to the plugin `name` as rows: the first error is logged (`name:
/// error`) and ends the rows.
pub(crate) fn rows_or_log(
    ctx: std::sync::Arc<Context>,
    name: String,
    rows: BoxStream<'static, HostResult<Row>>,
) -> BoxStream<'static, Row> {
    rows.take_while(move |r| {
        let ok = match r {
            Ok(_) => true,
            Err(e) => {
                ctx.log("ERROR", format!("{name}: {e}"));
                false
            }
        };
        async move { ok }
    })
    .filter_map(|r| async move { r.ok() })
    .boxed()
}

impl Registry {
    /// The registry with every built-in function and plugin.
    pub fn builtin() -> Self {
        let mut r = Self::new();
        functions::register(&mut r);
        plugins::register(&mut r);
        collections::register(&mut r);
        automation::register(&mut r);
        r
    }
}
