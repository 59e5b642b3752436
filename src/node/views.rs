//! The JSON shapes of the HTTP API (SPEC §7) and of the library API's answers.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::join_protocol::JoinProgress;
use crate::network_map::NetworkMap;
use crate::ops_log::{Digest, LwwMap, StateMachine};
use crate::replica::Replica;
use crate::{NodeId, Time, VersionVector};

/// A version vector as JSON: `{"<peer id>": seq}`; origins at 0 are left out.
pub fn vector_json(v: &VersionVector) -> BTreeMap<String, u64> {
    v.iter().map(|(id, seq)| (id.to_base58(), seq)).collect()
}

/// `GET /v1/status`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct StatusView {
    pub peer_id: String,
    /// The network's name (its gossip topic is `tidemark/<network>/ops`).
    pub network: String,
    pub incarnation: u64,
    pub listen_addrs: Vec<String>,
    /// Members in good standing in this node's map (itself included).
    pub members: usize,
    /// `joining`, `member`, `leaving` or `left`.
    pub phase: String,
    pub applied: BTreeMap<String, u64>,
    pub snapshot_point: BTreeMap<String, u64>,
    /// Digest of the stable state (the state at the snapshot point).
    pub digest: String,
    /// Whether this member heard, at its last failure check, from at most half of the
    /// members it counts (itself included): it is cut off or in a minority. It then evicts
    /// no one, so its snapshot point cannot pass the silent members' ops, and its writes
    /// reach only the members it still hears from.
    #[serde(default)]
    pub isolated: bool,
    /// Peer ids of the members this node suspects (silent for too long; evicted once the
    /// suspicion runs out, unless this node is isolated).
    #[serde(default)]
    pub suspected: Vec<String>,
    /// The membership view this node is in.
    #[serde(default)]
    pub view: ViewView,
    /// How the join is going, while the phase is `joining` (absent otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub join: Option<JoinView>,
}

/// The `view` object of `GET /v1/status`: the agreed membership view this node installed.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ViewView {
    /// The view's epoch. Views are agreed: every node that installed this epoch has the
    /// same members.
    pub epoch: u64,
    /// Peer ids of the view's members (its seats: the members that decide the next view).
    pub members: Vec<String>,
    /// Whether this node hears from a majority of those members, so that a view change
    /// (an eviction, an admission) can be decided where it is. False on a minority side of
    /// a partition, or after a majority of the view was lost (see `force-new-view`).
    #[serde(default)]
    pub quorum: bool,
}

impl ViewView {
    pub fn new<S: StateMachine>(replica: &Replica<S>, now: Time) -> Self {
        let view = replica.view();
        Self {
            epoch: view.epoch,
            members: view.members.keys().map(NodeId::to_base58).collect(),
            quorum: replica.hears_view_quorum(now),
        }
    }
}

/// One address whose last dial failed (in the `join` object of `GET /v1/status`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct DialFailureView {
    /// The address dialled, without its `/p2p` part (or `/p2p/<peer id>` alone for a dial
    /// by peer id with no address to try).
    pub addr: String,
    /// Why it failed: refused, timeout, unreachable, wrong peer id, handshake failed
    /// (network key mismatch), unsupported transport, name resolution failed, ...
    pub reason: String,
    /// Milliseconds since it failed.
    pub ms_ago: u64,
}

/// The `join` object of `GET /v1/status`: how a join (or rejoin) is going.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct JoinView {
    /// Join requests sent.
    pub requests: u64,
    /// Requests that went unanswered.
    pub unanswered: u64,
    /// Refusals received.
    pub refusals: u64,
    /// The last refusal's reason.
    pub last_refusal: Option<String>,
    /// Whole rounds of the list of possible sponsors that passed without a grant.
    pub rounds: u64,
    /// Possible sponsors known: the bootstrap peers, and those refusals suggested.
    pub sponsors: usize,
    /// Milliseconds since this join (or rejoin) started.
    pub since_ms_ago: u64,
    /// Why the node is still joining, in a sentence.
    #[serde(default)]
    pub waiting: String,
    /// The last failed dial of each address that failed and has not connected since.
    #[serde(default)]
    pub dial_failures: Vec<DialFailureView>,
}

impl JoinView {
    pub fn new(progress: &JoinProgress, now: crate::Time) -> Self {
        Self {
            requests: progress.requests,
            unanswered: progress.unanswered,
            refusals: progress.refusals,
            last_refusal: progress.last_refusal.clone(),
            rounds: progress.rounds,
            sponsors: progress.sponsors,
            since_ms_ago: now.since(progress.since).as_millis() as u64,
            waiting: String::new(),
            dial_failures: Vec::new(),
        }
    }
}

/// `POST /v1/ops` answer: the id of the op that was created.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct OpIdView {
    pub origin: String,
    pub seq: u64,
}

/// Longest key a client may write or read, in bytes of UTF-8.
pub const MAX_KEY_BYTES: usize = 1024;

/// Longest value a client may write, in bytes of UTF-8.
pub const MAX_VALUE_BYTES: usize = 64 * 1024;

/// `POST /v1/ops` body: a JSON object with both fields. `value` is a string, or `null` to
/// delete the key (a body without `value` is refused, so a forgotten field never deletes).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(try_from = "serde_json::Map<String, serde_json::Value>")]
pub struct WriteBody {
    pub key: String,
    pub value: Option<String>,
}

/// The fields of a [`WriteBody`], decoded from an object only (serde's derive would take
/// an array of two strings as well).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WriteFields {
    key: String,
    #[serde(deserialize_with = "required_nullable")]
    value: Option<String>,
}

impl TryFrom<serde_json::Map<String, serde_json::Value>> for WriteBody {
    type Error = serde_json::Error;

    fn try_from(object: serde_json::Map<String, serde_json::Value>) -> Result<Self, Self::Error> {
        let WriteFields { key, value } = serde_json::from_value(object.into())?;
        Ok(WriteBody { key, value })
    }
}

/// An `Option` whose field must be present (`null` is `None`): serde's derive fills in a
/// missing field only for plain `Option` fields, not for one with `deserialize_with`.
fn required_nullable<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Option::<String>::deserialize(d)
}

/// Why a key cannot be written or read: empty, or longer than [`MAX_KEY_BYTES`].
pub fn check_key(key: &str) -> Result<(), String> {
    if key.is_empty() {
        return Err("the key is empty".into());
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(format!(
            "the key has {} bytes; at most {MAX_KEY_BYTES} are allowed",
            key.len()
        ));
    }
    Ok(())
}

impl WriteBody {
    /// Why this write breaks the input rules (SPEC §7.2): an empty key, a key over
    /// [`MAX_KEY_BYTES`] or a value over [`MAX_VALUE_BYTES`].
    pub fn check(&self) -> Result<(), String> {
        check_key(&self.key)?;
        match &self.value {
            Some(value) if value.len() > MAX_VALUE_BYTES => Err(format!(
                "the value has {} bytes; at most {MAX_VALUE_BYTES} are allowed",
                value.len()
            )),
            _ => Ok(()),
        }
    }
}

/// Which state `GET /v1/state` reads.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum At {
    /// The stable state, at the snapshot point.
    Snapshot,
    /// Everything this node has applied.
    Applied,
}

/// One key-value entry.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct EntryView {
    pub key: String,
    pub value: String,
}

/// `GET /v1/state`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct StateView {
    pub at: BTreeMap<String, u64>,
    pub digest: String,
    pub entries: Vec<EntryView>,
    /// With a page limit: the key the next page starts at, or `None` after the last page.
    pub next_key: Option<String>,
}

/// `GET /v1/state/{key}`: one live key, read at the cut `at`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct KeyView {
    pub key: String,
    pub value: String,
    pub at: BTreeMap<String, u64>,
    pub digest: String,
}

/// `GET /readyz`: whether this node is a member that hears from a majority of the members.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ReadyView {
    pub ready: bool,
    /// `joining`, `member`, `leaving` or `left`.
    pub phase: String,
    /// The last failure check heard from at most half of the members in good standing.
    pub isolated: bool,
}

impl ReadyView {
    /// Why the node is not ready, if it is not.
    pub fn reason(&self) -> Option<String> {
        if self.phase != "member" {
            Some(format!("the node is not a member: it is {}", self.phase))
        } else if self.isolated {
            Some(
                "the node is isolated: it hears from at most half of the members in good \
                 standing"
                    .into(),
            )
        } else {
            None
        }
    }
}

/// A page of the state: entries from `start_key` (inclusive), at most `limit` of them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Page {
    pub start_key: Option<String>,
    pub limit: Option<usize>,
}

impl StateView {
    pub fn new(at: &VersionVector, digest: Digest, state: &LwwMap, page: &Page) -> Self {
        let start = page.start_key.as_deref().unwrap_or("");
        let limit = page.limit.unwrap_or(usize::MAX);
        let mut entries = Vec::new();
        let mut next_key = None;
        for (k, v) in state.entries_from(start) {
            if entries.len() == limit {
                next_key = Some(k.to_string());
                break;
            }
            entries.push(EntryView {
                key: k.into(),
                value: v.into(),
            });
        }
        Self {
            at: vector_json(at),
            digest: digest.to_hex(),
            entries,
            next_key,
        }
    }
}

/// One member in `GET /v1/network-map`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct MemberView {
    pub peer_id: String,
    /// `alive`, `suspect`, `left` or `evicted`.
    pub state: String,
    pub incarnation: u64,
    pub applied: BTreeMap<String, u64>,
    pub addrs: Vec<String>,
    /// Milliseconds since this node last heard from (or of) the member.
    pub last_heard_ms_ago: u64,
}

/// `GET /v1/network-map`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct NetworkMapView {
    pub members: Vec<MemberView>,
}

impl NetworkMapView {
    pub fn new(map: &NetworkMap, now: crate::Time) -> Self {
        Self {
            members: map
                .iter()
                .map(|(id, entry)| MemberView {
                    peer_id: id.to_base58(),
                    state: entry.record.state.as_str().into(),
                    incarnation: entry.record.incarnation,
                    applied: vector_json(&entry.record.applied),
                    addrs: entry.record.addrs.clone(),
                    last_heard_ms_ago: now.since(entry.last_heard).as_millis() as u64,
                })
                .collect(),
        }
    }
}

/// What the snapshot-point watch carries: the point, its size and the stable digest.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SnapshotPointView {
    pub snapshot_point: BTreeMap<String, u64>,
    /// Number of ops inside the snapshot point.
    pub ops: u64,
    pub digest: String,
    pub incarnation: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(json: &str) -> Result<WriteBody, String> {
        serde_json::from_str(json).map_err(|e| e.to_string())
    }

    #[test]
    fn a_write_body_is_an_object_with_both_fields_and_only_null_deletes() {
        let body = |key: &str, value: Option<&str>| WriteBody {
            key: key.into(),
            value: value.map(Into::into),
        };
        assert_eq!(
            decode(r#"{"key": "k", "value": "v"}"#),
            Ok(body("k", Some("v")))
        );
        assert_eq!(
            decode(r#"{"key": "k", "value": null}"#),
            Ok(body("k", None))
        );
        let missing = decode(r#"{"key": "k"}"#).unwrap_err();
        assert!(missing.contains("missing field `value`"), "{missing}");
        let unknown = decode(r#"{"key": "k", "value": "v", "ttl": 3}"#).unwrap_err();
        assert!(unknown.contains("ttl"), "{unknown}");
        assert!(decode(r#"["k", "v"]"#).is_err());
        assert!(decode(r#""k""#).is_err());
    }

    #[test]
    fn the_key_and_value_limits_are_inclusive() {
        let body = |key: usize, value: usize| WriteBody {
            key: "k".repeat(key),
            value: Some("v".repeat(value)),
        };
        assert!(body(MAX_KEY_BYTES, MAX_VALUE_BYTES).check().is_ok());
        assert!(body(0, 1).check().unwrap_err().contains("empty"));
        assert!(body(MAX_KEY_BYTES + 1, 1).check().is_err());
        assert!(body(1, MAX_VALUE_BYTES + 1).check().is_err());
        // a multi-byte character counts its bytes
        let wide = WriteBody {
            key: "é".repeat(MAX_KEY_BYTES / 2 + 1),
            value: None,
        };
        assert!(wide.check().is_err());
    }
}
