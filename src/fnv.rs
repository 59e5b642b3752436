//! FNV-1a, the 64-bit byte hash the protocol's deterministic choices start from: the
//! aggregation's groups and aggregators, the network map's record fingerprint and the
//! state's digest chunk boundaries. Each caller finishes the hash its own way; the values
//! are part of the protocol, so every node must compute the same ones.

const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
const PRIME: u64 = 0x0000_0100_0000_01b3;

/// FNV-1a over `bytes`, from the offset basis xor `salt` (0 for the standard hash).
pub(crate) fn fnv1a(salt: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(OFFSET_BASIS ^ salt, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(PRIME)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_published_fnv1a_test_vectors() {
        assert_eq!(fnv1a(0, b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(0, b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(0, b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn a_salt_changes_the_starting_point() {
        assert_ne!(fnv1a(1, b"a"), fnv1a(0, b"a"));
        assert_eq!(fnv1a(7, b""), 0xcbf2_9ce4_8422_2325 ^ 7);
    }
}
