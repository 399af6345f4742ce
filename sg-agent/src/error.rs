//! The product's error kinds, in one place, and the exit code each one means.
//!
//! Runtime failures carry their cause as an `anyhow` chain (the kernel's words, the file that
//! could not be written); the kinds that change what the caller should do are typed here, so
//! that the CLI's exit code, the daemon's "keep the enforced policy" and the tests ask one enum
//! instead of matching strings. `main` prints the whole chain (`{:#}`) and exits with
//! [`exit_code`] of it.
use crate::compile::CompileError;

/// An error the caller must tell apart from a runtime failure.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad input (a policy file, a command-line value): nothing was applied and the policy
    /// already enforced stays. The text is located and carries a hint.
    #[error("{0}")]
    InvalidInput(String),
    /// The policy binds to no device of this namespace: nothing was applied. A daemon
    /// started before the network is configured waits for the addresses instead of failing.
    #[error("{0}")]
    NotOnThisHost(String),
    /// The namespace was detached (`sg-agent detach`) while a daemon's agent was running.
    #[error("the namespace was detached (`sg-agent detach`)")]
    DetachedUnderUs,
    /// An apply while a `--confirm` apply waits for its confirmation (L1): nothing was
    /// applied; the text gives the deadline and how to confirm or roll back.
    #[error("{0}")]
    Pending(String),
    /// The SSH pre-flight (L2) found that the policy would refuse the administrator's next
    /// connection, and the apply was not forced: nothing was applied.
    #[error("{0}")]
    WouldLockOut(String),
    /// The compiler refused a validated policy (a quota of the maps, a stale index).
    #[error("compiling the policy")]
    Compile(#[from] CompileError),
}

/// What an error means for the caller: the documented exit codes of `sg-agent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// 2: invalid input or usage; nothing was changed.
    Invalid,
    /// 1: a runtime error.
    Runtime,
}

impl Kind {
    pub fn exit_code(self) -> u8 {
        match self {
            Kind::Invalid => 2,
            Kind::Runtime => 1,
        }
    }
}

impl Error {
    pub fn kind(&self) -> Kind {
        match self {
            Error::InvalidInput(_)
            | Error::NotOnThisHost(_)
            | Error::Pending(_)
            | Error::WouldLockOut(_) => Kind::Invalid,
            Error::DetachedUnderUs | Error::Compile(_) => Kind::Runtime,
        }
    }
}

/// `Error::InvalidInput` as an `anyhow::Error`, for `?` in functions returning anyhow.
pub fn invalid(msg: impl Into<String>) -> anyhow::Error {
    Error::InvalidInput(msg.into()).into()
}

/// A usage error of the command line (exit code 2).
pub fn usage(msg: &str) -> anyhow::Error {
    invalid(format!("usage error: {msg}; see sg-agent --help"))
}

/// The typed error anywhere in `e`'s chain (an outer context may wrap it).
pub fn find(e: &anyhow::Error) -> Option<&Error> {
    e.chain().find_map(|c| c.downcast_ref::<Error>())
}

/// The kind of any error: the typed one in its chain, else a runtime error.
pub fn kind(e: &anyhow::Error) -> Kind {
    find(e).map_or(Kind::Runtime, Error::kind)
}

/// Whether `e` is (or wraps) this kind of [`Error`].
pub fn is(e: &anyhow::Error, pred: impl Fn(&Error) -> bool) -> bool {
    find(e).is_some_and(pred)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_the_kind_through_context() {
        let e = invalid("bad").context("loading x");
        assert_eq!(kind(&e).exit_code(), 2);
        let e: anyhow::Error = Error::NotOnThisHost("no device".into()).into();
        assert_eq!(kind(&e).exit_code(), 2);
        let e: anyhow::Error = Error::DetachedUnderUs.into();
        assert_eq!(kind(&e).exit_code(), 1);
        assert_eq!(kind(&anyhow::anyhow!("io")).exit_code(), 1);
        let e: anyhow::Error = Error::Compile(CompileError::BadGeneration(3)).into();
        assert_eq!(kind(&e), Kind::Runtime);
        assert!(
            std::error::Error::source(find(&e).unwrap()).is_some(),
            "the source is kept"
        );
    }
}
