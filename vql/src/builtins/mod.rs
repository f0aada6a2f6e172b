//! The built-in functions ([`functions`]) and plugins ([`plugins`]) of SPEC-VQL, and the
//! registry holding all of them ([`Registry::builtin`]): the builtins fill the registry,
//! the registry knows none of them.

pub mod automation;
pub mod collections;
pub mod functions;
pub mod permissions;
pub mod plugins;

use crate::eval::registry::Registry;

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
