//! The tenant boundary as pure logic (no I/O): what a credential looks like, what a principal may do,
//! and how every name an environment owns is derived from its id.

pub mod authz;
pub mod credential;
pub mod layout;
pub mod policy;

pub use authz::{Access, Denial, EnvKeyAccess, EnvRole, Plane, Principal, authorize};
pub use layout::EnvLayout;
