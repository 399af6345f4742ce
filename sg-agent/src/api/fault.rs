//! The errors the API answers with: EC2's codes and messages, and the HTTP status each takes
//! (P1: 400 for the client's mistakes, 412 for DryRunOperation, 503 when the store cannot be
//! reached so that SDKs retry, 500 for sg's own failures).

use std::fmt;

/// One EC2 error: `<Code>` and `<Message>` of the error document.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fault {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl Fault {
    /// A client error (HTTP 400).
    pub fn client(code: &'static str, message: impl Into<String>) -> Fault {
        Fault {
            status: 400,
            code,
            message: message.into(),
        }
    }

    pub fn invalid(message: impl Into<String>) -> Fault {
        Fault::client("InvalidParameterValue", message)
    }

    pub fn missing(name: &str) -> Fault {
        Fault::client(
            "MissingParameter",
            format!("The request must contain the parameter {name}"),
        )
    }

    pub fn group_not_found(id: &str) -> Fault {
        Fault::client(
            "InvalidGroup.NotFound",
            format!("The security group '{id}' does not exist"),
        )
    }

    pub fn auth(message: impl Into<String>) -> Fault {
        Fault {
            status: 401,
            code: "AuthFailure",
            message: message.into(),
        }
    }

    /// DryRun: the call would have succeeded (HTTP 412, as EC2 answers).
    pub fn dry_run() -> Fault {
        Fault {
            status: 412,
            code: "DryRunOperation",
            message: "Request would have succeeded, but DryRun flag is set.".into(),
        }
    }

    /// The store cannot be reached: SDKs retry a 503.
    pub fn unavailable(e: &anyhow::Error) -> Fault {
        Fault {
            status: 503,
            code: "Unavailable",
            message: format!("The policy store cannot be reached: {e:#}"),
        }
    }

    pub fn internal(message: impl Into<String>) -> Fault {
        Fault {
            status: 500,
            code: "InternalError",
            message: message.into(),
        }
    }
}
