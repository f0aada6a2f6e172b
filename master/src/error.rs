//! The admin API's errors and the one place they become gRPC statuses. Each area's error
//! knows its gRPC code ([`GrpcCode`]); [`ApiError`] wraps them all with their sources, and
//! `From<ApiError> for Status` is the one conversion, so a handler writes
//! `.map_err(ApiError::from)?` (or returns an `ApiError`) and never builds a status itself.

use talon_artifacts::{repository, LoadError};
use talon_shared::frontend::RelabelError;
use talon_shared::{bus, queue, store};
use tonic::{Code, Status};

/// An error that knows which gRPC code it answers with.
pub trait GrpcCode {
    /// The code a caller sees.
    fn code(&self) -> Code;
}

impl GrpcCode for store::Error {
    fn code(&self) -> Code {
        match self {
            store::Error::Closed => Code::Unavailable,
            store::Error::Open { .. } | store::Error::Redb(_) | store::Error::Corrupt { .. } => {
                Code::Internal
            }
        }
    }
}

impl GrpcCode for bus::Error {
    fn code(&self) -> Code {
        Code::Unavailable
    }
}

impl GrpcCode for queue::Error {
    fn code(&self) -> Code {
        use queue::Error as Q;
        match self {
            Q::UnknownQueue(_) => Code::NotFound,
            Q::WrongKind { .. } => Code::FailedPrecondition,
            Q::InvalidJson { .. }
            | Q::NotAnObject { .. }
            | Q::RowTooLarge { .. }
            | Q::InQueue { .. }
            | Q::InvalidOrg(_)
            | Q::InvalidBatch { .. } => Code::InvalidArgument,
            Q::Store(e) => e.code(),
            Q::Bus(e) => e.code(),
        }
    }
}

impl GrpcCode for repository::Error {
    fn code(&self) -> Code {
        use repository::Error as R;
        match self {
            R::NotFound(_) => Code::NotFound,
            R::Invalid(_) => Code::InvalidArgument,
            R::Exists(_) => Code::AlreadyExists,
            R::BuiltIn(_) => Code::PermissionDenied,
        }
    }
}

impl GrpcCode for RelabelError {
    fn code(&self) -> Code {
        match self {
            RelabelError::NotFound(_) => Code::NotFound,
            RelabelError::Invalid(_) => Code::InvalidArgument,
            RelabelError::Store(e) => e.code(),
        }
    }
}

impl GrpcCode for crate::monitor::Error {
    fn code(&self) -> Code {
        match self {
            crate::monitor::Error::Invalid(_) => Code::InvalidArgument,
            crate::monitor::Error::Store(e) => e.code(),
        }
    }
}

/// Everything an admin API call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Queue(#[from] queue::Error),
    #[error(transparent)]
    Repository(#[from] repository::Error),
    #[error(transparent)]
    Store(#[from] store::Error),
    #[error(transparent)]
    Relabel(#[from] RelabelError),
    #[error(transparent)]
    Monitor(#[from] crate::monitor::Error),
    #[error("queue {queue} is {kind}; API users may push only to SERVER_EVENT queues")]
    PushRefused { queue: String, kind: String },
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
}

impl From<LoadError> for ApiError {
    fn from(e: LoadError) -> Self {
        ApiError::Repository(repository::Error::Invalid(e))
    }
}

impl GrpcCode for ApiError {
    fn code(&self) -> Code {
        match self {
            ApiError::Queue(e) => e.code(),
            ApiError::Repository(e) => e.code(),
            ApiError::Store(e) => e.code(),
            ApiError::Relabel(e) => e.code(),
            ApiError::Monitor(e) => e.code(),
            ApiError::PushRefused { .. } => Code::FailedPrecondition,
            ApiError::BadRequest(_) => Code::InvalidArgument,
            ApiError::NotFound(_) => Code::NotFound,
        }
    }
}

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Self {
        Status::new(e.code(), e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_area_keeps_its_code_through_the_api_error() {
        let cases: Vec<(ApiError, Code)> = vec![
            (
                queue::Error::UnknownQueue("X".into()).into(),
                Code::NotFound,
            ),
            (
                queue::Error::Store(store::Error::Closed).into(),
                Code::Unavailable,
            ),
            (store::Error::Closed.into(), Code::Unavailable),
            (
                RelabelError::Invalid("a label must not be empty".into()).into(),
                Code::InvalidArgument,
            ),
            (
                crate::monitor::Error::Invalid("bad".into()).into(),
                Code::InvalidArgument,
            ),
            (ApiError::NotFound("no such".into()), Code::NotFound),
        ];
        for (e, code) in cases {
            let text = e.to_string();
            let status = Status::from(e);
            assert_eq!(status.code(), code, "{text}");
            assert_eq!(status.message(), text);
        }
    }
}
