//! Verified tokens, remembered until they expire, so a caller that reuses its token (as
//! client_credentials callers do for its whole lifetime) costs one hash, not one signature
//! check, per request.
//!
//! Keyed by the token's SHA-256; an entry is used only while the token's `exp` is ahead and
//! the key that verified it is still in the issuer's key set (a key that left the JWKS takes
//! its tokens with it). Bounded: when full, expired entries are dropped; if that frees
//! nothing, the new token is simply not cached (no eviction storms under a flood of tokens).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use super::principal::Principal;

/// SHA-256 of a token.
pub type TokenDigest = [u8; 32];

/// One verified token.
#[derive(Clone)]
pub struct CachedToken {
    pub principal: Arc<Principal>,
    /// The token's `exp` (Unix seconds).
    pub expires_at: u64,
    /// The `kid` of the key that verified it.
    pub kid: Option<String>,
}

/// The cache; `capacity` 0 disables it.
pub struct TokenCache {
    capacity: usize,
    entries: RwLock<HashMap<TokenDigest, CachedToken>>,
}

impl TokenCache {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            entries: RwLock::new(HashMap::new()),
        }
    }

    /// The entry for `digest` if it has not expired at `now` (Unix seconds).
    pub fn get(&self, digest: &TokenDigest, now: u64) -> Option<CachedToken> {
        let entries = self.entries.read().unwrap_or_else(|p| p.into_inner());
        entries
            .get(digest)
            .filter(|entry| now < entry.expires_at)
            .cloned()
    }

    pub fn insert(&self, digest: TokenDigest, entry: CachedToken, now: u64) {
        if self.capacity == 0 {
            return;
        }
        let mut entries = self.entries.write().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= self.capacity {
            entries.retain(|_, cached| now < cached.expires_at);
        }
        if entries.len() < self.capacity {
            entries.insert(digest, entry);
        }
    }

    /// Forgets a token (its key left the JWKS).
    pub fn remove(&self, digest: &TokenDigest) {
        self.entries
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(digest);
    }

    pub fn len(&self) -> usize {
        self.entries.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(expires_at: u64) -> CachedToken {
        let principal = Principal::from_claims("i".into(), serde_json::Map::new(), "h".into());
        CachedToken {
            principal: Arc::new(principal),
            expires_at,
            kid: None,
        }
    }

    #[test]
    fn entries_live_until_the_token_expires() {
        let cache = TokenCache::new(10);
        cache.insert([1; 32], entry(100), 50);
        assert!(cache.get(&[1; 32], 99).is_some());
        assert!(cache.get(&[1; 32], 100).is_none());
    }

    #[test]
    fn a_full_cache_drops_expired_entries_then_stops_caching() {
        let cache = TokenCache::new(2);
        cache.insert([1; 32], entry(10), 0);
        cache.insert([2; 32], entry(100), 0);
        cache.insert([3; 32], entry(100), 20);
        assert!(cache.get(&[1; 32], 20).is_none() && cache.get(&[3; 32], 20).is_some());
        cache.insert([4; 32], entry(100), 20);
        assert_eq!(cache.len(), 2);
        assert!(
            cache.get(&[4; 32], 20).is_none(),
            "not cached rather than evicting live entries"
        );
    }

    #[test]
    fn capacity_zero_disables_the_cache() {
        let cache = TokenCache::new(0);
        cache.insert([1; 32], entry(100), 0);
        assert!(cache.is_empty());
    }
}
