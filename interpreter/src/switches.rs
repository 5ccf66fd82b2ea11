//! procpy's own switches (`--emulate-gil`, `--progress`, `--trace`, `--cluster`,
//! `--authkey-file`) and how they reach every
//! process of a run without anyone mutating the environment. No VM in here.
//!
//! The top-level procpy [`set`]s them before its interpreter (or any thread) exists; forked
//! children inherit them with the memory; a procpy that is exec'd (spawn children, the fork
//! server) gets them as environment variables on its `Command` ([`Switches::child_env`]) and
//! reads them back when first asked ([`get`] falls back to [`Switches::from_env`]).

use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::OnceLock;

/// The environment variable that turns on `--emulate-gil` in an exec'd procpy (value `1`).
pub const EMULATE_GIL_ENV: &str = "PROCPY_EMULATE_GIL";
/// The environment variable that turns on `--progress` in an exec'd procpy (value `1`).
pub const PROGRESS_ENV: &str = "PROCPY_PROGRESS";
/// The environment variable naming the Redis URL of `--cluster` (a user may set it too).
pub const CLUSTER_ENV: &str = "PROCPY_CLUSTER";
/// The environment variable naming the key file of `--authkey-file`.
pub const CLUSTER_KEY_FILE_ENV: &str = "PROCPY_CLUSTER_KEY_FILE";

/// The switches of this run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Switches {
    /// Python threads take turns on one global lock.
    pub emulate_gil: bool,
    /// Progress lines for long `Pool.map`/`imap` runs.
    pub progress: bool,
    /// The `--trace` spool every process appends its events to (see [`crate::trace`]).
    pub trace_spool: Option<PathBuf>,
    /// `--cluster URL`: process pools run on the workers of this Redis server.
    pub cluster: Option<String>,
    /// `--authkey-file FILE`: the key the cluster's payloads are signed with.
    pub cluster_key_file: Option<PathBuf>,
}

static SWITCHES: OnceLock<Switches> = OnceLock::new();

impl Switches {
    /// The switches an exec'd procpy was started with (or a user set in the environment).
    pub fn from_env() -> Self {
        let on = |name| std::env::var_os(name).is_some_and(|v| v == "1");
        Switches {
            emulate_gil: on(EMULATE_GIL_ENV),
            progress: on(PROGRESS_ENV),
            trace_spool: std::env::var_os(crate::trace::ENV).map(PathBuf::from),
            // An empty value counts as unset, as for most variables a shell exports.
            cluster: std::env::var(CLUSTER_ENV).ok().filter(|u| !u.is_empty()),
            cluster_key_file: std::env::var_os(CLUSTER_KEY_FILE_ENV)
                .filter(|f| !f.is_empty())
                .map(PathBuf::from),
        }
    }

    /// The environment variables that hand these switches to an exec'd procpy.
    pub fn child_env(&self) -> Vec<(&'static str, OsString)> {
        let mut env = Vec::new();
        if self.emulate_gil {
            env.push((EMULATE_GIL_ENV, OsString::from("1")));
        }
        if self.progress {
            env.push((PROGRESS_ENV, OsString::from("1")));
        }
        if let Some(spool) = &self.trace_spool {
            env.push((crate::trace::ENV, spool.clone().into_os_string()));
        }
        if let Some(url) = &self.cluster {
            env.push((CLUSTER_ENV, OsString::from(url)));
        }
        if let Some(file) = &self.cluster_key_file {
            env.push((CLUSTER_KEY_FILE_ENV, file.clone().into_os_string()));
        }
        env
    }
}

/// Store this run's switches; call before the interpreter starts. Fails (handing them back)
/// if they were already stored or read.
pub fn set(switches: Switches) -> Result<(), Switches> {
    SWITCHES.set(switches)
}

/// This process's switches: those [`set`] here or in the process it was forked from, else
/// those of the environment.
pub fn get() -> &'static Switches {
    SWITCHES.get_or_init(Switches::from_env)
}
