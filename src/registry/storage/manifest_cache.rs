//! Manifest content kept in memory by digest. Content is addressed by its
//! digest, so an entry never goes stale; whether a repository still holds
//! the manifest is read from storage on every request (its revision link),
//! so a deletion, by this process or another replica, is seen at once. On a
//! bucket this halves the requests a manifest GET by tag makes (the tag's
//! link and the revision link, not also a stat and a read of the content).

use bytes::Bytes;

use crate::registry::digest::Digest;

/// Bytes of manifests kept: a few thousand typical manifests.
const CAPACITY_BYTES: u64 = 32 << 20;

#[derive(Debug, Clone, Copy, Default)]
struct ByLength;

impl quick_cache::Weighter<Digest, Bytes> for ByLength {
    fn weight(&self, _: &Digest, content: &Bytes) -> u64 {
        // Never 0: a weightless entry would never be evicted.
        content.len().max(1) as u64
    }
}

pub(super) struct ManifestCache(quick_cache::sync::Cache<Digest, Bytes, ByLength>);

impl std::fmt::Debug for ManifestCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ManifestCache")
            .field("entries", &self.0.len())
            .field("bytes", &self.0.weight())
            .finish()
    }
}

impl Default for ManifestCache {
    fn default() -> Self {
        ManifestCache(quick_cache::sync::Cache::with_weighter(
            4096,
            CAPACITY_BYTES,
            ByLength,
        ))
    }
}

impl ManifestCache {
    pub(super) fn get(&self, d: &Digest) -> Option<Bytes> {
        self.0.get(d)
    }

    pub(super) fn insert(&self, d: Digest, content: Bytes) {
        self.0.insert(d, content);
    }
}
