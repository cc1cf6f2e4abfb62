//! Symmetry reduction by fingerprint.
//!
//! Interchangeable processes (same role, same budget, ids compared only for
//! equality by the core) make `n!` states out of one. stateright 0.31 offers
//! `CheckerBuilder::symmetry`, but only its DFS and simulation checkers use
//! it, and it needs a representative *state*, which would mean rewriting
//! process ids inside a [`weir_core::World`] whose fields are private.
//!
//! The checkers deduplicate by the state's `Hash` alone, so the models do the
//! reduction there instead: a state's hash is the least hash of its
//! relabellings under every permutation of the interchangeable processes.
//! Two states that differ only by such a relabelling get one fingerprint and
//! are explored once, from whichever was reached first. Paths stay concrete
//! (BFS replays real actions), so a counterexample is a real run.
//!
//! This is sound when the model and its properties are symmetric in those
//! processes: the core compares process ids only for equality, each model
//! enumerates actions for every process alike, and every property quantifies
//! over all processes alike. Each model states which of its processes are
//! interchangeable.

use std::hash::{DefaultHasher, Hash, Hasher};

/// Every permutation of `0..n`, as `perm[old] = new` (n! of them; n is 3 or
/// 4 here).
pub fn permutations(n: usize) -> Vec<Vec<usize>> {
    fn extend(prefix: &mut Vec<usize>, n: usize, out: &mut Vec<Vec<usize>>) {
        if prefix.len() == n {
            out.push(prefix.clone());
            return;
        }
        for next in 0..n {
            if !prefix.contains(&next) {
                prefix.push(next);
                extend(prefix, n, out);
                prefix.pop();
            }
        }
    }
    let mut out = Vec::new();
    extend(&mut Vec::with_capacity(n), n, &mut out);
    out
}

/// The least hash of `key(perm)` over `perms`: the same for every state of
/// one symmetry class. `DefaultHasher::new` has fixed keys, so the value is
/// stable within a build.
pub fn least_hash<K: Hash>(perms: &[Vec<usize>], key: impl Fn(&[usize]) -> K) -> u64 {
    perms
        .iter()
        .map(|perm| {
            let mut hasher = DefaultHasher::new();
            key(perm).hash(&mut hasher);
            hasher.finish()
        })
        .min()
        .expect("at least the identity permutation")
}

/// Permutes `items` so that the item at `old` lands at `perm[old]`.
pub fn permute<T: Clone, const N: usize>(items: &[T; N], perm: &[usize]) -> [T; N] {
    std::array::from_fn(|new| {
        let old = perm
            .iter()
            .position(|&p| p == new)
            .expect("perm is a permutation");
        items[old].clone()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permutations_are_all_there_once() {
        let perms = permutations(3);
        assert_eq!(perms.len(), 6);
        let mut sorted = perms.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), 6);
        assert_eq!(permute(&['a', 'b', 'c'], &[2, 0, 1]), ['b', 'c', 'a']);
    }

    #[test]
    fn relabelled_keys_share_a_hash() {
        let perms = permutations(2);
        let key = |state: [u8; 2]| move |perm: &[usize]| permute(&state, perm);
        assert_eq!(
            least_hash(&perms, key([1, 2])),
            least_hash(&perms, key([2, 1]))
        );
        assert_ne!(
            least_hash(&perms, key([1, 1])),
            least_hash(&perms, key([1, 2]))
        );
    }
}
