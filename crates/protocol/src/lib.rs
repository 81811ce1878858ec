//! Wire types of the vibebase platform API. No tokio, no axum, no database: everything here is data that
//! crosses the wire, shared by the server, the CLI and tests.

pub mod agent;
pub mod api;
pub mod apps;
pub mod auth;
pub mod functions;
pub mod hosting;
pub mod ids;
pub mod meter;
pub mod sandbox;

pub use ids::{EnvId, IdError};
pub use meter::{Meter, MeterKind};

/// The header every response carries with the request's id.
pub const REQUEST_ID_HEADER: &str = "x-request-id";
