//! The admin API's errors and the one function that maps them to gRPC status codes.

use talon_artifacts::{repository, LoadError};
use talon_shared::{queue, store};
use tonic::{Code, Status};

/// Everything an admin API call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Queue(#[from] queue::Error),
    #[error(transparent)]
    Repository(#[from] repository::Error),
    #[error(transparent)]
    Store(#[from] store::Error),
    #[error("queue {queue} is {kind}; API users may push only to SERVER_EVENT queues")]
    PushRefused { queue: String, kind: String },
    #[error("{0}")]
    BadRequest(String),
}

impl From<LoadError> for ApiError {
    fn from(e: LoadError) -> Self {
        ApiError::Repository(repository::Error::Invalid(e))
    }
}

/// Maps an API error to a gRPC status; the message is the error's one line.
pub fn to_status(e: ApiError) -> Status {
    use queue::Error as Q;
    use repository::Error as R;
    let code = match &e {
        ApiError::Queue(Q::UnknownQueue(_)) | ApiError::Repository(R::NotFound(_)) => {
            Code::NotFound
        }
        ApiError::Queue(Q::WrongKind { .. }) | ApiError::PushRefused { .. } => {
            Code::FailedPrecondition
        }
        ApiError::Queue(
            Q::InvalidJson { .. }
            | Q::NotAnObject { .. }
            | Q::RowTooLarge { .. }
            | Q::InQueue { .. }
            | Q::InvalidOrg(_),
        )
        | ApiError::Repository(R::Invalid(_))
        | ApiError::BadRequest(_) => Code::InvalidArgument,
        ApiError::Repository(R::Exists(_)) => Code::AlreadyExists,
        ApiError::Repository(R::BuiltIn(_)) => Code::PermissionDenied,
        ApiError::Queue(Q::Store(store::Error::Closed) | Q::Bus(_))
        | ApiError::Store(store::Error::Closed) => Code::Unavailable,
        ApiError::Queue(Q::Store(_)) | ApiError::Store(_) => Code::Internal,
    };
    Status::new(code, e.to_string())
}
