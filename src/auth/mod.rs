//! Authentication: OIDC access tokens verified against the trusted issuers' keys.

pub mod introspection;
pub mod jwks;
pub mod principal;
pub mod token_cache;
pub mod unverified;
pub mod verifier;

pub use principal::Principal;
pub use verifier::{AuthError, Verifier};
