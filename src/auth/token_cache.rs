//! Verified tokens, remembered until they expire, so a caller that reuses its token (as
//! client_credentials callers do for its whole lifetime) costs one hash, not one signature
//! check, per request.
//!
//! Keyed by the token's SHA-256; an entry is used only while the token's `exp` is ahead and
//! the key that verified it is still in the issuer's key set (a key that left the JWKS takes
//! its tokens with it). An expired entry is a miss and is removed when met.
//!
//! The map is `quick_cache`'s sharded cache: lookups of different tokens do not wait for
//! each other, and its eviction (S3-FIFO) is scan-resistant: a flood of distinct one-off
//! tokens passes through the small probationary queue and does not push the callers that
//! keep coming back out of the cache.

use std::sync::Arc;

use quick_cache::sync::Cache;

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
    entries: Option<Cache<TokenDigest, CachedToken>>,
}

impl TokenCache {
    pub fn new(capacity: usize) -> Self {
        Self {
            entries: (capacity > 0).then(|| Cache::new(capacity)),
        }
    }

    /// The entry for `digest` if it has not expired at `now` (Unix seconds).
    pub fn get(&self, digest: &TokenDigest, now: u64) -> Option<CachedToken> {
        let entries = self.entries.as_ref()?;
        let entry = entries.get(digest)?;
        if now < entry.expires_at {
            return Some(entry);
        }
        entries.remove_if(digest, |entry| now >= entry.expires_at);
        None
    }

    pub fn insert(&self, digest: TokenDigest, entry: CachedToken, now: u64) {
        if let Some(entries) = &self.entries
            && now < entry.expires_at
        {
            entries.insert(digest, entry);
        }
    }

    /// Forgets a token (its key left the JWKS).
    pub fn remove(&self, digest: &TokenDigest) {
        if let Some(entries) = &self.entries {
            entries.remove(digest);
        }
    }

    pub fn len(&self) -> usize {
        self.entries.as_ref().map_or(0, Cache::len)
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
    fn a_flood_of_one_off_tokens_keeps_the_returning_callers() {
        let cache = TokenCache::new(100);
        let regular: Vec<TokenDigest> = (0..20u8).map(|n| [n; 32]).collect();
        for digest in &regular {
            cache.insert(*digest, entry(1_000), 0);
        }
        // The regular callers come back: they are hot.
        for digest in &regular {
            assert!(cache.get(digest, 1).is_some());
        }
        // 10,000 distinct tokens, each seen once.
        for n in 0..10_000u32 {
            let mut digest = [0xff; 32];
            digest[..4].copy_from_slice(&n.to_le_bytes());
            cache.insert(digest, entry(1_000), 1);
        }
        assert!(cache.len() <= 100, "bounded: {}", cache.len());
        let kept = regular.iter().filter(|d| cache.get(d, 2).is_some()).count();
        assert_eq!(kept, regular.len(), "the flood evicted returning callers");
    }

    #[test]
    fn an_expired_entry_is_a_miss_and_is_removed() {
        let cache = TokenCache::new(10);
        cache.insert([1; 32], entry(10), 0);
        assert!(cache.get(&[1; 32], 10).is_none());
        assert!(cache.is_empty());
        cache.insert([2; 32], entry(10), 10);
        assert!(cache.is_empty(), "an expired token is not cached");
    }

    #[test]
    fn capacity_zero_disables_the_cache() {
        let cache = TokenCache::new(0);
        cache.insert([1; 32], entry(100), 0);
        assert!(cache.is_empty());
    }
}
