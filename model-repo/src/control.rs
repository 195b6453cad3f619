//! Changing the loaded table while the daemon serves: what every process
//! holds of it ([`Live`]), what the processes tell the supervisor about it
//! ([`Report`]), and what an operator asks of it ([`ControlOp`], through the
//! frontend's repository API). The supervisor owns the table; it decides
//! every change and hands each process the whole new table.

use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};

use crate::Repository;

/// A process's copy of the table, replaced whole when the supervisor hands
/// it a new one. Readers take the current one for the span of a request
/// (an `Arc`), so a change never alters a request under way.
#[derive(Debug)]
pub struct Live {
    current: RwLock<Arc<Repository>>,
}

impl Live {
    pub fn new(repository: Arc<Repository>) -> Live {
        Live { current: RwLock::new(repository) }
    }

    /// The table now.
    pub fn get(&self) -> Arc<Repository> {
        self.current.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn set(&self, repository: Arc<Repository>) {
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = repository;
    }
}

/// What a process tells the supervisor about the table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "report", rename_all = "snake_case")]
pub enum Report {
    /// It now works by table `generation`: what that table makes ready it
    /// accepts, what it unloads it no longer sends anywhere.
    Applied { generation: u64 },
    /// An inference worker loaded and warmed up entry `slot` (state
    /// LOADING), or says why it could not.
    Loaded { slot: u16, error: Option<String> },
    /// The frontend has no request of entry `slot` (UNLOADING) in flight.
    Drained { slot: u16 },
}

/// An operator's order (the repository extension), from the frontend.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum ControlOp {
    /// Load `name` (its versions by its policy, alongside what serves it;
    /// the pipelines' models with it), with `config` (a JSON config
    /// override, validated as a file is) instead of its `config.toml`.
    Load { name: String, config: Option<String> },
    /// Unload every version of `name`; with `dependents`, the loaded
    /// pipelines that use it too (else they make it refuse).
    Unload { name: String, dependents: bool },
}

/// Why an order was refused, and how the repository API answers it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "message", rename_all = "snake_case")]
pub enum ControlError {
    /// Not in the repository: 404.
    NotFound(String),
    /// Invalid (its config, a version, a dependency) or refused (dependents
    /// loaded; model control off): 400.
    Invalid(String),
    /// The inference workers could not load it: 400 with their reason, the
    /// serving version untouched.
    LoadFailed(String),
    /// The daemon is stopping, or a worker it needs cannot come back: 503.
    Unavailable(String),
}

impl std::fmt::Display for ControlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (ControlError::NotFound(m)
        | ControlError::Invalid(m)
        | ControlError::LoadFailed(m)
        | ControlError::Unavailable(m)) = self;
        f.write_str(m)
    }
}

/// What a process sends the supervisor about the table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Upstream {
    Report(Report),
    /// An operator's order, `id` naming the answer the frontend awaits.
    Control {
        id: u64,
        op: ControlOp,
    },
}

/// How a process sends [`Upstream`] messages (its control socket, in the
/// daemon; a channel, in tests).
pub type Notify = Arc<dyn Fn(Upstream) + Send + Sync>;

/// A secret (the admin token): compared in constant time, never printed.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: String) -> Secret {
        Secret(value)
    }

    /// Whether `given` is the secret, in time independent of where they
    /// first differ.
    pub fn matches(&self, given: &str) -> bool {
        let (a, b) = (self.0.as_bytes(), given.as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_is_never_printed_and_matches_only_itself() {
        let s = Secret::new("hunter2".into());
        assert_eq!(format!("{s:?}"), "***");
        assert!(s.matches("hunter2"));
        assert!(!s.matches("hunter3") && !s.matches("hunter") && !s.matches(""));
    }

    #[test]
    fn messages_read_as_json_lines() {
        let m = Upstream::Control { id: 7, op: ControlOp::Unload { name: "m".into(), dependents: true } };
        let text = serde_json::to_string(&m).unwrap();
        assert_eq!(serde_json::from_str::<Upstream>(&text).unwrap(), m);
        let r = serde_json::to_string(&Report::Loaded { slot: 3, error: None }).unwrap();
        assert_eq!(r, r#"{"report":"loaded","slot":3,"error":null}"#);
    }
}
