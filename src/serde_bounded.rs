//! Deserializing `imbl` maps from untrusted bytes. imbl's own visitor preallocates as many
//! entries as the input's length header claims, so a 70-byte gossip message claiming a
//! map of three billion entries made the node try to allocate 50 GB and abort (found by
//! the `wire_message` fuzz target). This visitor grows the map only as entries actually
//! arrive, so memory follows the bytes received.

use std::fmt;
use std::marker::PhantomData;

use imbl::OrdMap;
use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer};

/// Deserializes an `OrdMap` without trusting the input's size hint.
pub fn ord_map<'de, D, K, V>(deserializer: D) -> Result<OrdMap<K, V>, D::Error>
where
    D: Deserializer<'de>,
    K: Deserialize<'de> + Ord + Clone,
    V: Deserialize<'de> + Clone,
{
    ord_map_with_keys_from::<D, K, K, V>(deserializer)
}

/// [`ord_map`] for keys read as `R` and held as `K` (a key type whose own `Deserialize`
/// does not read every encoding its `R` does).
pub fn ord_map_with_keys_from<'de, D, R, K, V>(deserializer: D) -> Result<OrdMap<K, V>, D::Error>
where
    D: Deserializer<'de>,
    R: Deserialize<'de> + Into<K>,
    K: Ord + Clone,
    V: Deserialize<'de> + Clone,
{
    struct MapVisitor<R, K, V>(PhantomData<(R, K, V)>);

    impl<'de, R, K, V> Visitor<'de> for MapVisitor<R, K, V>
    where
        R: Deserialize<'de> + Into<K>,
        K: Ord + Clone,
        V: Deserialize<'de> + Clone,
    {
        type Value = OrdMap<K, V>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a map")
        }

        fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Self::Value, A::Error> {
            let mut map = OrdMap::new();
            while let Some((key, value)) = access.next_entry::<R, V>()? {
                map.insert(key.into(), value);
            }
            Ok(map)
        }
    }

    deserializer.deserialize_map(MapVisitor::<R, K, V>(PhantomData))
}

#[cfg(test)]
mod tests {
    use crate::gossip::decode;
    use crate::ops_log::LwwMap;
    use crate::VersionVector;

    #[test]
    fn a_map_header_claiming_billions_of_entries_is_an_error_not_an_allocation() {
        // the fuzzer's input: a `Stale` message whose version vector claims 0xbababbba
        // entries and holds a few bytes
        let crash: &[u8] = &[
            101, 83, 116, 97, 108, 101, 146, 186, 186, 186, 187, 186, 186, 186, 186, 186, 186, 186,
            186, 186, 186, 187, 186, 186, 186, 186, 8, 1, 18, 97, 111, 115, 0, 1, 97, 97, 111, 38,
            123, 255, 255, 255, 255, 69, 69, 69, 69, 69, 69, 69, 69, 69, 69, 69, 69, 69, 69, 69,
            69, 69, 69, 69, 69, 69, 0, 69, 69, 69, 69, 69, 69, 69, 0, 128,
        ];
        assert!(decode::<LwwMap>(crash).is_err());
        // a map header alone, claiming 2^32 - 1 entries
        let header = [0xbau8, 0xff, 0xff, 0xff, 0xff];
        assert!(ciborium::from_reader::<VersionVector, _>(&header[..]).is_err());
        assert!(
            ciborium::from_reader::<LwwMap, _>(
                &[
                    0xa1, 0x67, b'e', b'n', b't', b'r', b'i', b'e', b's', 0xba, 0xff, 0xff, 0xff,
                    0xff
                ][..]
            )
            .is_err()
        );
    }

    #[test]
    fn zero_entries_of_a_received_version_vector_are_dropped() {
        let mut bytes = Vec::new();
        let zero: std::collections::BTreeMap<crate::NodeId, u64> = [
            (crate::NodeId::synthetic(1), 0),
            (crate::NodeId::synthetic(2), 3),
        ]
        .into();
        ciborium::into_writer(&zero, &mut bytes).unwrap();
        let vv: VersionVector = ciborium::from_reader(&bytes[..]).unwrap();
        let mut want = VersionVector::new();
        want.set(crate::NodeId::synthetic(2), 3);
        assert_eq!(vv, want, "structurally equal to the same set of ops");
    }
}
