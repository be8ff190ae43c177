//! Live counts per key (sessions per customer, agents per token and per network,
//! pending connections per address): up one, down one, and an entry that reaches
//! zero is dropped, so a table only holds keys with something live.

use dashmap::DashMap;
use std::borrow::Borrow;
use std::hash::Hash;

/// Counts one more under `key`.
pub(crate) fn up<K: Eq + Hash>(counts: &DashMap<K, usize>, key: K) {
    *counts.entry(key).or_insert(0) += 1;
}

/// Counts one less under `key`, dropping the entry at zero.
pub(crate) fn down<K, Q>(counts: &DashMap<K, usize>, key: &Q)
where
    K: Eq + Hash + Borrow<Q>,
    Q: Eq + Hash + ?Sized,
{
    counts.remove_if_mut(key, |_, count| {
        *count = count.saturating_sub(1);
        *count == 0
    });
}
