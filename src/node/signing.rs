//! The node's op authenticator: this node signs its ops with its libp2p ed25519 key, and a
//! received op counts only if it verifies under the public key inside its origin's peer id
//! (ed25519 peer ids carry the key itself). The signed message is a domain tag naming the
//! network, then the op's signing bytes, so an op signed in one network does not verify in
//! another.

use std::collections::BTreeMap;
use std::sync::Mutex;

use libp2p::identity::{Keypair, PublicKey};
use libp2p::PeerId;

use crate::ops_log::{OpAuthenticator, Signature};
use crate::NodeId;

/// Origins whose public keys are kept decoded; the cache is emptied when it is full.
const KEYS_KEPT: usize = 4096;

/// Signs with this node's key; verifies against the origin's peer id.
pub struct PeerIdAuthenticator {
    key: Keypair,
    domain: Vec<u8>,
    /// Each origin's public key as decoded from its peer id (`None`: the id carries none),
    /// so that checking an op does not parse the id and decompress the key's curve point
    /// again. Bounded by [`KEYS_KEPT`]: ops of made-up origins cannot fill memory.
    keys: Mutex<BTreeMap<NodeId, Option<PublicKey>>>,
}

impl std::fmt::Debug for PeerIdAuthenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerIdAuthenticator")
            .field("peer_id", &self.key.public().to_peer_id())
            .finish()
    }
}

impl PeerIdAuthenticator {
    pub fn new(key: Keypair, network: &str) -> Self {
        let mut domain = b"tidemark op v1\0".to_vec();
        domain.extend_from_slice(network.as_bytes());
        domain.push(0);
        Self {
            key,
            domain,
            keys: Mutex::new(BTreeMap::new()),
        }
    }

    /// `origin`'s public key, decoded once and kept.
    fn public_key(&self, origin: &NodeId) -> Option<PublicKey> {
        let mut keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(key) = keys.get(origin) {
            return key.clone();
        }
        if keys.len() >= KEYS_KEPT {
            keys.clear();
        }
        let key = inline_public_key(origin);
        keys.insert(origin.clone(), key.clone());
        key
    }

    fn message(&self, signing_bytes: &[u8]) -> Vec<u8> {
        let mut message = Vec::with_capacity(self.domain.len() + signing_bytes.len());
        message.extend_from_slice(&self.domain);
        message.extend_from_slice(signing_bytes);
        message
    }
}

/// The public key a peer id carries inline (ed25519 ones do; hashed ids of larger keys do
/// not, and their ops cannot be checked).
fn inline_public_key(origin: &NodeId) -> Option<PublicKey> {
    let peer = PeerId::from_bytes(origin.as_bytes()).ok()?;
    let multihash: &libp2p::multihash::Multihash<64> = peer.as_ref();
    // multihash code 0 is the identity hash: the digest is the key's protobuf encoding
    if multihash.code() != 0 {
        return None;
    }
    PublicKey::try_decode_protobuf(multihash.digest()).ok()
}

impl OpAuthenticator for PeerIdAuthenticator {
    fn sign(&self, signing_bytes: &[u8]) -> Signature {
        Signature(
            self.key
                .sign(&self.message(signing_bytes))
                .expect("ed25519 signing cannot fail"),
        )
    }

    fn verify(&self, origin: &NodeId, signing_bytes: &[u8], signature: &Signature) -> bool {
        self.public_key(origin)
            .is_some_and(|key| key.verify(&self.message(signing_bytes), &signature.0))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::ops_log::LwwMap;
    use crate::ops_log::{InstallError, LwwOp, Op, OpError, OpsLog, Received, SignatureError};
    use crate::VersionVector;

    fn node(network: &str) -> (NodeId, PeerIdAuthenticator) {
        let key = Keypair::generate_ed25519();
        let id = NodeId::from_bytes(&key.public().to_peer_id().to_bytes()).unwrap();
        (id, PeerIdAuthenticator::new(key, network))
    }

    fn put(key: &str, value: &str) -> LwwOp {
        LwwOp {
            key: key.into(),
            value: Some(value.into()),
        }
    }

    /// An op made and signed by `origin` in `origin_log`.
    fn signed(
        origin_log: &mut OpsLog<LwwMap>,
        origin: &NodeId,
        auth: &PeerIdAuthenticator,
    ) -> Arc<Op<LwwOp>> {
        origin_log.create_signed(origin, put("k", "v"), Some(auth))
    }

    #[test]
    fn an_op_signed_by_its_origin_is_applied() {
        let (a, a_auth) = node("net");
        let (_, b_auth) = node("net");
        let op = signed(&mut OpsLog::new(), &a, &a_auth);
        let mut at_b = OpsLog::<LwwMap>::new();
        assert_eq!(
            at_b.receive_verified(op, Some(&b_auth)),
            Ok(Received::Applied(1))
        );
        assert_eq!(at_b.applied_state().get("k").as_deref(), Some("v"));
    }

    #[test]
    fn forged_mutated_unsigned_and_foreign_network_ops_are_rejected() {
        let (a, a_auth) = node("net");
        let (m, m_auth) = node("net");
        let (_, b_auth) = node("net");
        let (_, other_net) = node("other");
        let mut at_b = OpsLog::<LwwMap>::new();
        let bad = Err(OpError::Signature(SignatureError::BadSignature));

        // forged: m signs an op that names a as its origin
        let mut forged = (*signed(&mut OpsLog::new(), &a, &a_auth)).clone();
        forged.sign(&m_auth);
        assert_eq!(at_b.receive_verified(Arc::new(forged), Some(&b_auth)), bad);

        // mutated: a's genuine op with another value
        let mut mutated = (*signed(&mut OpsLog::new(), &a, &a_auth)).clone();
        mutated.payload = put("k", "evil");
        assert_eq!(at_b.receive_verified(Arc::new(mutated), Some(&b_auth)), bad);

        // unsigned
        let mut unsigned = (*signed(&mut OpsLog::new(), &m, &m_auth)).clone();
        unsigned.signature = None;
        assert_eq!(
            at_b.receive_verified(Arc::new(unsigned), Some(&b_auth)),
            Err(OpError::Signature(SignatureError::Unsigned))
        );

        // signed in another network
        let (o, o_auth) = node("other");
        let foreign = signed(&mut OpsLog::new(), &o, &o_auth);
        assert!(other_net.verify(
            &o,
            &foreign.signing_bytes(),
            foreign.signature.as_ref().unwrap()
        ));
        assert_eq!(at_b.receive_verified(foreign, Some(&b_auth)), bad);

        assert_eq!(at_b.applied().total(), 0, "nothing was applied");
    }

    #[test]
    fn a_handed_over_suffix_installs_only_if_every_op_is_signed_by_its_origin() {
        let (a, a_auth) = node("net");
        let (_, m_auth) = node("net");
        let (_, joiner_auth) = node("net");
        let mut at_a = OpsLog::<LwwMap>::new();
        let first = signed(&mut at_a, &a, &a_auth);
        let second = signed(&mut at_a, &a, &a_auth);
        let install = |suffix: Vec<Arc<Op<LwwOp>>>| {
            OpsLog::<LwwMap>::install(
                LwwMap::default(),
                VersionVector::new(),
                0,
                suffix,
                Some(&joiner_auth),
            )
        };

        let installed = install(vec![first.clone(), second.clone()]).unwrap();
        assert_eq!(installed.applied().total(), 2);

        // a sponsor slips in a forged op in a's name
        let mut forged = (*second).clone();
        forged.payload = put("k", "evil");
        forged.sign(&m_auth);
        assert_eq!(
            install(vec![first, Arc::new(forged)]).unwrap_err(),
            InstallError::InvalidOp {
                origin: a,
                seq: 2,
                error: OpError::Signature(SignatureError::BadSignature),
            }
        );
    }

    #[test]
    fn the_decoded_keys_are_kept_per_origin_and_within_their_bound() {
        let (a, a_auth) = node("net");
        let (m, m_auth) = node("net");
        let (_, b_auth) = node("net");
        let op = signed(&mut OpsLog::new(), &a, &a_auth);
        let check = |op: &Op<LwwOp>| {
            b_auth.verify(
                &op.origin,
                &op.signing_bytes(),
                op.signature.as_ref().unwrap(),
            )
        };
        assert!(check(&op));
        // a's key is kept now: an op of a signed by m still fails, and one of m passes
        let mut forged = (*op).clone();
        forged.sign(&m_auth);
        assert!(!check(&forged));
        assert!(check(&signed(&mut OpsLog::new(), &m, &m_auth)));
        assert_eq!(b_auth.keys.lock().unwrap().len(), 2);
        // made-up origins (ids without a key) fill the cache to its bound and no further,
        // and a's ops still verify afterwards
        for i in 0..KEYS_KEPT as u64 + 10 {
            let nobody = NodeId::synthetic(i);
            assert!(!b_auth.verify(&nobody, b"x", op.signature.as_ref().unwrap()));
        }
        assert!(b_auth.keys.lock().unwrap().len() <= KEYS_KEPT);
        assert!(check(&op));
        assert!(!check(&forged));
    }

    #[test]
    fn a_replayed_op_is_a_duplicate() {
        let (a, a_auth) = node("net");
        let (_, b_auth) = node("net");
        let op = signed(&mut OpsLog::new(), &a, &a_auth);
        let mut at_b = OpsLog::<LwwMap>::new();
        at_b.receive_verified(op.clone(), Some(&b_auth)).unwrap();
        assert_eq!(
            at_b.receive_verified(op, Some(&b_auth)),
            Ok(Received::Duplicate)
        );
        assert_eq!(at_b.applied().total(), 1);
    }
}
