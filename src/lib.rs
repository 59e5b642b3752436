//! tidemark: a peer-to-peer replica with a decentralized snapshot point.
//!
//! Nodes gossip causally ordered operations, keep a network map of what every known member
//! has applied, admit joiners through a direct handshake with a sponsor, and compute locally
//! the snapshot point: the largest prefix of operations every member has applied.
//!
//! The protocol core is sans-IO: [`ops_log`], [`network_map`], [`join_protocol`] and
//! [`gossip`] are pure state machines, composed by [`replica::Replica`], which takes events
//! (messages, timers, local commands) with the current time and emits actions (send,
//! publish, schedule a timer). Drivers (the simulator in `sim/`, the libp2p node) map those
//! actions to a network.

mod fnv;
pub mod gossip;
pub mod join_protocol;
pub mod network_map;
#[cfg(feature = "node")]
pub mod node;
pub mod node_id;
pub mod ops_log;
pub mod outbox;
pub mod replica;
mod serde_bounded;
pub mod snapshot;
pub mod testing;
pub mod time;
pub mod version_vector;

pub use node_id::NodeId;
pub use time::Time;
pub use version_vector::VersionVector;
