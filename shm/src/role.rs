//! What each process is: the one type the supervisor, the children and the
//! metrics name processes by. [`crate::Topology`] maps roles to process ids.

use std::fmt;

/// The role a process plays.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    Frontend,
    /// Inference worker `i` (one per GPU, or the CPU inference workers).
    Gpu(u16),
    /// Preproc worker `i`.
    Preproc(u16),
}

impl Role {
    /// The kind of process, as operators see it (metrics' `role` label, the
    /// first word after `child` on a worker's command line).
    pub fn kind(&self) -> &'static str {
        match self {
            Role::Frontend => "frontend",
            Role::Gpu(_) => "inference",
            Role::Preproc(_) => "preproc",
        }
    }

    /// Which of its kind the process is (none for the one frontend).
    pub fn index(&self) -> Option<u16> {
        match self {
            Role::Frontend => None,
            Role::Gpu(i) | Role::Preproc(i) => Some(*i),
        }
    }

    /// The short name of the process in every log line and metrics'
    /// `process` label: `frontend`, `gpu0`, `preproc1`.
    pub fn name(&self) -> String {
        match self {
            Role::Frontend => "frontend".into(),
            Role::Gpu(i) => format!("gpu{i}"),
            Role::Preproc(i) => format!("preproc{i}"),
        }
    }

    /// The role a command line names ([`Role::kind`], then [`Role::index`]).
    pub fn from_parts(kind: &str, index: Option<u16>) -> Result<Role, String> {
        match (kind, index) {
            ("frontend", None) => Ok(Role::Frontend),
            ("inference", Some(i)) => Ok(Role::Gpu(i)),
            ("preproc", Some(i)) => Ok(Role::Preproc(i)),
            _ => Err(format!(
                "`{kind}{}` is not a role; accepted: frontend, inference N, preproc N",
                index.map(|i| format!(" {i}")).unwrap_or_default()
            )),
        }
    }
}

/// `frontend`, `inference 0`, `preproc 1`: what `ps` shows after `highserve child`.
impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.index() {
            Some(i) => write!(f, "{} {i}", self.kind()),
            None => f.write_str(self.kind()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_round_trip_through_their_command_line() {
        for role in [Role::Frontend, Role::Gpu(0), Role::Preproc(3)] {
            let shown = role.to_string();
            let mut words = shown.split(' ');
            let kind = words.next().unwrap();
            let index = words.next().map(|i| i.parse().unwrap());
            assert_eq!(Role::from_parts(kind, index), Ok(role));
        }
        assert_eq!(Role::Gpu(1).to_string(), "inference 1");
        assert_eq!((Role::Gpu(1).name(), Role::Preproc(2).kind()), ("gpu1".into(), "preproc"));
        let e = Role::from_parts("frontend", Some(1)).unwrap_err();
        assert!(e.contains("frontend 1") && e.contains("inference N"), "{e}");
    }
}
