//! The one domain error of the request paths. `api/` maps it to HTTP statuses and
//! problem+json bodies in one place; nothing else knows about status codes.

use crate::runtime::InferenceError;
use crate::vision::VisionError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("there is no model named {0:?}; GET /v1/models lists them")]
    UnknownModel(String),
    #[error("model {name} is still loading; try again in a moment")]
    ModelLoading { name: String },
    #[error("model {name} cannot load within the memory budget: {reason}")]
    ModelNoMemory { name: String, reason: String },
    #[error("model {name} failed to load: {reason}")]
    ModelFailed { name: String, reason: String },
    #[error("model {name} is unloaded; POST /v1/models/{name}/load loads it again")]
    ModelUnloaded { name: String },
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{source_name}: {error}")]
    Image { source_name: String, error: VisionError },
    /// A malformed request: query parameters, request shape.
    #[error("{0}")]
    BadRequest(String),
    /// A well-formed request whose content cannot be used (bad base64, no images).
    #[error("{0}")]
    Unprocessable(String),
    #[error("the request body is over the limit of {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("the form field {field:?} is over the limit of {limit} bytes")]
    FieldTooLarge { field: String, limit: usize },
    #[error("{0}")]
    Overloaded(String),
    /// A dataset, job or other resource that does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The request contradicts the current state (a name taken, a dataset in use).
    #[error("{0}")]
    Conflict(String),
    /// A service graft depends on (the database) cannot be reached right now.
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Unauthorized(String),
    /// The storage root's disk has too little free space for what the request would write.
    #[error("{0}")]
    InsufficientStorage(String),
    /// An upload or import that made no dataset, with the kind of refusal.
    #[error("{0}")]
    DatasetRefused(crate::data::DatasetRefusal),
    /// A job refused at submission, with the kind of refusal.
    #[error("{0}")]
    JobRefused(crate::jobs::JobRefusal),
    #[error("{0}")]
    Internal(String),
}

impl From<crate::jobs::JobRefusal> for Error {
    fn from(refusal: crate::jobs::JobRefusal) -> Self {
        use crate::jobs::JobRefusal;
        match refusal {
            JobRefusal::Store(err) => err.into(),
            JobRefusal::Internal(reason) => Self::Internal(reason),
            other => Self::JobRefused(other),
        }
    }
}

impl From<crate::store::StoreError> for Error {
    fn from(err: crate::store::StoreError) -> Self {
        if err.is_unavailable() {
            Self::Unavailable(format!("the database cannot be reached ({err}); try again shortly"))
        } else {
            Self::Internal(err.to_string())
        }
    }
}

impl From<crate::serving::Unavailable> for Error {
    fn from(err: crate::serving::Unavailable) -> Self {
        use crate::serving::Unavailable;
        match err {
            Unavailable::Unknown(name) => Self::UnknownModel(name),
            Unavailable::Loading(name) => Self::ModelLoading { name },
            Unavailable::Failed(name, reason) => Self::ModelFailed { name, reason },
            Unavailable::Unloaded(name) => Self::ModelUnloaded { name },
            Unavailable::NoMemory(name, reason) => Self::ModelNoMemory { name, reason },
        }
    }
}

impl From<crate::serving::TrainedModelError> for Error {
    fn from(err: crate::serving::TrainedModelError) -> Self {
        use crate::serving::TrainedModelError;
        match err {
            TrainedModelError::BaseUnavailable(unavailable) => unavailable.into(),
            other => Self::Internal(other.to_string()),
        }
    }
}

impl From<InferenceError> for Error {
    fn from(err: InferenceError) -> Self {
        match err {
            InferenceError::Overloaded => Self::Overloaded(err.to_string()),
            InferenceError::Stopped | InferenceError::Runtime(_) => Self::Internal(err.to_string()),
        }
    }
}
