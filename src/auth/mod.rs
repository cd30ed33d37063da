//! Authentication: OIDC access tokens verified against the trusted issuers' keys.

pub mod fetch;
pub mod introspection;
pub mod jwks;
pub mod opaque;
pub mod principal;
pub mod token_cache;
pub mod unverified;
pub mod verifier;

pub use principal::Principal;
/// The HTTP client the verifier fetches keys and introspects with.
pub use reqwest::Client as HttpClient;
pub use verifier::{AuthError, Verifier};
