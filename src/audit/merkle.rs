//! RFC 9162 (Certificate Transparency 2.0) Merkle tree hashing over the audit records'
//! bodies: a checkpoint commits to a tree size and root, an inclusion proof shows a record
//! is in it, a consistency proof shows a later tree extends an earlier one unchanged.
//!
//! Leaf hash = SHA-256(0x00 ‖ body), node hash = SHA-256(0x01 ‖ left ‖ right), the empty
//! tree's root = SHA-256(""). The proof algorithms follow §2.1.3 and §2.1.4 literally.

use sha2::{Digest, Sha256};

pub type Hash = [u8; 32];

pub fn leaf_hash(body: &[u8]) -> Hash {
    let mut hasher = Sha256::new();
    hasher.update([0u8]);
    hasher.update(body);
    hasher.finalize().into()
}

pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut hasher = Sha256::new();
    hasher.update([1u8]);
    hasher.update(left);
    hasher.update(right);
    hasher.finalize().into()
}

pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

/// The roots of the perfect subtrees a tree of `size` leaves decomposes into, largest first:
/// enough to append leaves and compute the root without the leaves themselves. Writers keep
/// it next to the chain head, so any replica can checkpoint the shared trail.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Frontier {
    size: u64,
    subtrees: Vec<Hash>,
}

impl Frontier {
    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn push(&mut self, leaf: Hash) {
        let mut hash = leaf;
        let mut size = self.size;
        // Each trailing 1 bit of the old size is a subtree of the new leaf's height to merge.
        while size & 1 == 1 {
            let Some(left) = self.subtrees.pop() else {
                break;
            };
            hash = node_hash(&left, &hash);
            size >>= 1;
        }
        self.subtrees.push(hash);
        self.size += 1;
    }

    pub fn root(&self) -> Hash {
        let mut subtrees = self.subtrees.iter().rev();
        let Some(last) = subtrees.next() else {
            return empty_root();
        };
        subtrees.fold(*last, |right, left| node_hash(left, &right))
    }

    /// `size:hex,hex,…` — how the frontier is stored in Redis.
    pub fn encode(&self) -> String {
        let hashes: Vec<String> = self.subtrees.iter().map(hex::encode).collect();
        format!("{}:{}", self.size, hashes.join(","))
    }

    pub fn decode(text: &str) -> Option<Self> {
        let (size, hashes) = text.split_once(':')?;
        let size: u64 = size.parse().ok()?;
        let subtrees = hashes
            .split(',')
            .filter(|h| !h.is_empty())
            .map(parse_hash)
            .collect::<Option<Vec<_>>>()?;
        (subtrees.len() == size.count_ones() as usize).then_some(Self { size, subtrees })
    }
}

pub fn parse_hash(text: &str) -> Option<Hash> {
    hex::decode(text).ok()?.try_into().ok()
}

/// The root of the tree over `leaves` (MTH, §2.1.1).
pub fn root(leaves: &[Hash]) -> Hash {
    match leaves.len() {
        0 => empty_root(),
        1 => leaves[0],
        n => {
            let k = split(n);
            node_hash(&root(&leaves[..k]), &root(&leaves[k..]))
        }
    }
}

/// The largest power of two smaller than `n` (n ≥ 2).
fn split(n: usize) -> usize {
    1 << (usize::BITS - (n - 1).leading_zeros() - 1)
}

/// The audit path of leaf `index` in the tree over `leaves` (PATH, §2.1.3.1).
pub fn inclusion_proof(index: usize, leaves: &[Hash]) -> Vec<Hash> {
    let n = leaves.len();
    if n <= 1 || index >= n {
        return Vec::new();
    }
    let k = split(n);
    if index < k {
        let mut path = inclusion_proof(index, &leaves[..k]);
        path.push(root(&leaves[k..]));
        path
    } else {
        let mut path = inclusion_proof(index - k, &leaves[k..]);
        path.push(root(&leaves[..k]));
        path
    }
}

/// The proof that the tree over `leaves[..old_size]` is a prefix of the tree over `leaves`
/// (PROOF and SUBPROOF, §2.1.4.1).
pub fn consistency_proof(old_size: usize, leaves: &[Hash]) -> Vec<Hash> {
    if old_size == 0 || old_size >= leaves.len() {
        return Vec::new();
    }
    subproof(old_size, leaves, true)
}

fn subproof(m: usize, leaves: &[Hash], complete: bool) -> Vec<Hash> {
    let n = leaves.len();
    if m == n {
        return if complete {
            Vec::new()
        } else {
            vec![root(leaves)]
        };
    }
    let k = split(n);
    if m <= k {
        let mut proof = subproof(m, &leaves[..k], complete);
        proof.push(root(&leaves[k..]));
        proof
    } else {
        let mut proof = subproof(m - k, &leaves[k..], false);
        proof.push(root(&leaves[..k]));
        proof
    }
}

/// Checks an inclusion proof (§2.1.3.2): the root it leads to from `leaf` at `index`.
pub fn root_from_inclusion(index: u64, size: u64, leaf: Hash, path: &[Hash]) -> Option<Hash> {
    if index >= size {
        return None;
    }
    let (mut fn_, mut sn) = (index, size - 1);
    let mut r = leaf;
    for p in path {
        if sn == 0 {
            return None;
        }
        if fn_ & 1 == 1 || fn_ == sn {
            r = node_hash(p, &r);
            if fn_ & 1 == 0 {
                while fn_ & 1 == 0 && fn_ != 0 {
                    fn_ >>= 1;
                    sn >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    (sn == 0).then_some(r)
}

/// Checks a consistency proof (§2.1.4.2) between `(old_size, old_root)` and
/// `(new_size, new_root)`.
pub fn verify_consistency(
    old_size: u64,
    new_size: u64,
    old_root: &Hash,
    new_root: &Hash,
    proof: &[Hash],
) -> bool {
    if old_size == 0 || old_size > new_size {
        return false;
    }
    if old_size == new_size {
        return proof.is_empty() && old_root == new_root;
    }
    let mut path: Vec<Hash> = proof.to_vec();
    // Step 1: if old_size is a power of two, the old root starts the path.
    if old_size.is_power_of_two() {
        path.insert(0, *old_root);
    }
    let mut fn_ = old_size - 1;
    let mut sn = new_size - 1;
    while fn_ & 1 == 1 {
        fn_ >>= 1;
        sn >>= 1;
    }
    let Some((first, rest)) = path.split_first() else {
        return false;
    };
    let (mut fr, mut sr) = (*first, *first);
    for c in rest {
        if sn == 0 {
            return false;
        }
        if fn_ & 1 == 1 || fn_ == sn {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            if fn_ & 1 == 0 {
                while fn_ & 1 == 0 && fn_ != 0 {
                    fn_ >>= 1;
                    sn >>= 1;
                }
            }
        } else {
            sr = node_hash(&sr, c);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    fr == *old_root && sr == *new_root && sn == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaves(n: usize) -> Vec<Hash> {
        (0..n)
            .map(|i| leaf_hash(format!("record {i}").as_bytes()))
            .collect()
    }

    #[test]
    fn the_frontier_tracks_the_root_and_survives_encoding() {
        let all = leaves(70);
        let mut frontier = Frontier::default();
        assert_eq!(frontier.root(), empty_root());
        for (i, leaf) in all.iter().enumerate() {
            frontier.push(*leaf);
            assert_eq!(frontier.root(), root(&all[..=i]), "size {}", i + 1);
            assert_eq!(Frontier::decode(&frontier.encode()), Some(frontier.clone()));
        }
    }

    #[test]
    fn inclusion_proofs_verify_for_every_leaf_and_size() {
        let all = leaves(33);
        for size in 1..=all.len() {
            let tree_root = root(&all[..size]);
            for index in 0..size {
                let path = inclusion_proof(index, &all[..size]);
                let got = root_from_inclusion(index as u64, size as u64, all[index], &path);
                assert_eq!(got, Some(tree_root), "leaf {index} of {size}");
                // Another leaf does not lead to the root.
                let other = all[(index + 1) % size];
                if size > 1 {
                    assert_ne!(
                        root_from_inclusion(index as u64, size as u64, other, &path),
                        Some(tree_root)
                    );
                }
            }
        }
    }

    #[test]
    fn consistency_proofs_verify_and_reject_a_changed_history() {
        let all = leaves(33);
        for new in 1..=all.len() {
            for old in 1..=new {
                let proof = consistency_proof(old, &all[..new]);
                let (old_root, new_root) = (root(&all[..old]), root(&all[..new]));
                assert!(
                    verify_consistency(old as u64, new as u64, &old_root, &new_root, &proof),
                    "{old} -> {new}"
                );
                if old < new {
                    let mut forged = all[..new].to_vec();
                    forged[0] = leaf_hash(b"rewritten");
                    assert!(!verify_consistency(
                        old as u64,
                        new as u64,
                        &old_root,
                        &root(&forged),
                        &proof
                    ));
                }
            }
        }
    }

    #[test]
    fn certificate_transparency_reference_roots() {
        // The reference vectors of the CT implementations (RFC 6962 test data).
        let data: [&[u8]; 8] = [
            b"",
            b"\x00",
            b"\x10",
            b"\x20\x21",
            b"\x30\x31",
            b"\x40\x41\x42\x43",
            b"\x50\x51\x52\x53\x54\x55\x56\x57",
            b"\x60\x61\x62\x63\x64\x65\x66\x67\x68\x69\x6a\x6b\x6c\x6d\x6e\x6f",
        ];
        let all: Vec<Hash> = data.iter().map(|d| leaf_hash(d)).collect();
        let expected = [
            (
                1,
                "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            ),
            (
                3,
                "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
            ),
            (
                5,
                "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
            ),
            (
                8,
                "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
            ),
        ];
        for (size, root_hex) in expected {
            assert_eq!(hex::encode(root(&all[..size])), root_hex, "size {size}");
        }
        assert_eq!(
            hex::encode(empty_root()),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
