//! Why a connection attempt failed, in a few words an operator can act on: the driver logs
//! every failed dial (and every failed incoming connection) with its address and this
//! reason, and keeps the last reason per address for the `join` object of `/v1/status`.
//!
//! libp2p reports failures as nested errors (the swarm's dial error, the transport's error
//! per address, the upgrade's error, the socket's `io::Error`); [`Reason`] walks that
//! chain and names the first thing it recognises.

use std::error::Error;
use std::fmt;
use std::io;

use libp2p::core::transport::TransportError;
use libp2p::swarm::{DialError, ListenError};
use libp2p::{Multiaddr, PeerId};

/// What went wrong with one connection attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reason {
    /// Nothing listens there (the TCP connection was refused).
    Refused,
    /// No answer in time (a dead host, a firewall dropping packets, a wrong IP).
    Timeout,
    /// The host or network cannot be reached.
    Unreachable,
    /// Another node answers there than the `/p2p` part of the address names.
    WrongPeerId { obtained: PeerId },
    /// The connection opened but the handshake failed (garbage, or the peer hung up): the
    /// peer holds another network key (or none, or this node none), or it is not a
    /// tidemark node. `keyed`: whether this node runs a private network; `detail`: what
    /// libp2p said.
    Handshake { keyed: bool, detail: String },
    /// The address uses a transport this build cannot dial.
    Unsupported,
    /// The name in the address does not resolve.
    Dns(String),
    /// That address is this node itself.
    Itself,
    /// Anything else, as libp2p words it.
    Other(String),
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Refused => write!(f, "refused: nothing listens there"),
            Reason::Timeout => write!(f, "timeout: no answer"),
            Reason::Unreachable => write!(f, "unreachable: no route to the host"),
            Reason::WrongPeerId { obtained } => {
                write!(f, "wrong peer id: {obtained} answers there")
            }
            Reason::Handshake { keyed: true, detail } => write!(
                f,
                "handshake failed ({detail}): network key mismatch (the peer holds another --network-key or none), or not a tidemark node"
            ),
            Reason::Handshake {
                keyed: false,
                detail,
            } => write!(
                f,
                "handshake failed ({detail}): network key mismatch (the peer runs a private network with --network-key), or not a tidemark node"
            ),
            Reason::Unsupported => write!(
                f,
                "unsupported transport: only /ip4, /ip6, /dns, /dns4 and /dns6 over /tcp can be dialled"
            ),
            Reason::Dns(why) => write!(f, "name resolution failed: {why}"),
            Reason::Itself => write!(f, "that address is this node"),
            Reason::Other(text) => write!(f, "{text}"),
        }
    }
}

impl Reason {
    /// The failures of a dial, one per address tried (a dial by peer id with no address
    /// tried yields one entry without an address). `None` for a dial that was not made at
    /// all (its condition was false: the peer is connected or being dialled) or that was
    /// aborted (the peer connected otherwise).
    pub fn of_dial(error: &DialError, keyed: bool) -> Option<Vec<(Option<Multiaddr>, Reason)>> {
        Some(match error {
            // not made, or given up because the peer connected otherwise
            DialError::DialPeerConditionFalse(_) | DialError::Aborted => return None,
            DialError::NoAddresses => vec![(None, Reason::Other("no address known".into()))],
            DialError::LocalPeerId { address } => vec![(Some(address.clone()), Reason::Itself)],
            DialError::WrongPeerId { obtained, address } => vec![(
                Some(address.clone()),
                Reason::WrongPeerId {
                    obtained: *obtained,
                },
            )],
            DialError::Denied { cause } => {
                vec![(None, Reason::Other(format!("denied: {cause}")))]
            }
            DialError::Transport(errors) => errors
                .iter()
                .map(|(addr, error)| (Some(addr.clone()), Reason::of_transport(error, keyed)))
                .collect(),
        })
    }

    /// Why an incoming connection failed.
    pub fn of_incoming(error: &ListenError, keyed: bool) -> Reason {
        match error {
            ListenError::Aborted => Reason::Other("aborted".into()),
            ListenError::WrongPeerId { obtained, .. } => Reason::WrongPeerId {
                obtained: *obtained,
            },
            ListenError::LocalPeerId { .. } => Reason::Itself,
            ListenError::Denied { cause } => Reason::Other(format!("denied: {cause}")),
            ListenError::Transport(error) => Reason::of_transport(error, keyed),
        }
    }

    fn of_transport(error: &TransportError<io::Error>, keyed: bool) -> Reason {
        match error {
            TransportError::MultiaddrNotSupported(_) => Reason::Unsupported,
            TransportError::Other(error) => Reason::of_io(error, keyed),
        }
    }

    /// Walks the chain of an `io::Error` (looking inside every `io::Error`, whose
    /// `source` skips the error it wraps).
    fn of_io(error: &io::Error, keyed: bool) -> Reason {
        let mut texts = Vec::new();
        let mut next: Option<&(dyn Error + 'static)> = Some(error);
        let mut depth = 0;
        while let Some(e) = next {
            depth += 1;
            if depth > 32 {
                break;
            }
            if let Some(io) = e.downcast_ref::<io::Error>() {
                match io.kind() {
                    io::ErrorKind::ConnectionRefused => return Reason::Refused,
                    io::ErrorKind::TimedOut => return Reason::Timeout,
                    io::ErrorKind::HostUnreachable | io::ErrorKind::NetworkUnreachable => {
                        return Reason::Unreachable
                    }
                    // the TCP connection was open: the peer hung up during the handshake
                    io::ErrorKind::UnexpectedEof
                    | io::ErrorKind::ConnectionReset
                    | io::ErrorKind::BrokenPipe => {
                        return Reason::Handshake {
                            keyed,
                            detail: io.to_string(),
                        }
                    }
                    _ => {}
                }
                texts.push(io.to_string());
                next = match io.get_ref() {
                    Some(inner) => Some(inner as &(dyn Error + 'static)),
                    None => None,
                };
            } else {
                texts.push(e.to_string());
                next = e.source();
            }
        }
        // some layers keep only the text of the error they wrap
        let has = |needle: &str| texts.iter().any(|t| t.contains(needle));
        if has("Connection refused") {
            Reason::Refused
        } else if has("Timeout has been reached") || has("timed out") {
            Reason::Timeout
        } else if has("Upgrade error")
            || has("Multistream select failed")
            || has("Connection reset by peer")
            || has("unexpected end of file")
            || has("Broken pipe")
        {
            Reason::Handshake {
                keyed,
                detail: texts.last().map(|t| one_line(t)).unwrap_or_default(),
            }
        } else if has("Unsupported resolved address") {
            Reason::Unsupported
        } else if let Some(dns) = texts.iter().rev().find(|t| {
            t.contains("no record")
                || t.contains("No Matching Records")
                || t.contains("no connections available")
                || t.contains("resolve")
        }) {
            Reason::Dns(one_line(dns))
        } else {
            Reason::Other(
                texts
                    .last()
                    .map(|t| one_line(t))
                    .unwrap_or_else(|| "unknown error".into()),
            )
        }
    }
}

/// `text` on one line (libp2p lists several dial errors on lines of their own).
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_deep_in_the_chain_is_named() {
        let inner = io::Error::from(io::ErrorKind::ConnectionRefused);
        let wrapped = io::Error::other(Box::new(inner) as Box<dyn Error + Send + Sync>);
        let error = TransportError::Other(io::Error::other(wrapped));
        assert_eq!(Reason::of_transport(&error, false), Reason::Refused);
    }

    #[test]
    fn a_peer_hanging_up_during_the_handshake_is_a_handshake_failure() {
        let inner = io::Error::from(io::ErrorKind::UnexpectedEof);
        let error = TransportError::Other(io::Error::other(inner));
        let reason = Reason::of_transport(&error, true);
        assert!(matches!(reason, Reason::Handshake { keyed: true, .. }));
        assert!(
            reason.to_string().contains("network key mismatch"),
            "{reason}"
        );
    }

    #[test]
    fn an_unsupported_address_is_named() {
        let addr: Multiaddr = "/ip4/127.0.0.1/udp/1/quic-v1".parse().unwrap();
        let error = TransportError::MultiaddrNotSupported(addr);
        assert_eq!(Reason::of_transport(&error, false), Reason::Unsupported);
        assert!(Reason::Unsupported.to_string().starts_with("unsupported"));
    }
}
