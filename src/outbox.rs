//! What the sans-IO core asks its driver to do ([`Action`]), and the queue its state
//! machines push those actions into ([`Outbox`]). The replica owns one outbox and lends it
//! to each part of the protocol as it handles an event; the driver drains it with
//! `Replica::poll_action`.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::gossip::Message;
use crate::node_id::NodeId;
use crate::ops_log::StateMachine;
use crate::time::Time;

/// What the replica asks its driver to do.
#[derive(Debug, Clone)]
pub enum Action<S: StateMachine> {
    /// Send directly to one peer (request–response in the libp2p node).
    Send {
        to: NodeId,
        message: Arc<Message<S>>,
    },
    /// Publish on the network's topic (gossipsub in the libp2p node).
    Publish { message: Arc<Message<S>> },
    /// Call `handle_timeout` at `at`; replaces any earlier request.
    ScheduleWake { at: Time },
}

/// Actions in the order they were decided.
#[derive(Debug)]
pub struct Outbox<S: StateMachine> {
    actions: VecDeque<Action<S>>,
}

impl<S: StateMachine> Default for Outbox<S> {
    fn default() -> Self {
        Self {
            actions: VecDeque::new(),
        }
    }
}

impl<S: StateMachine> Outbox<S> {
    /// Sends `message` to one peer.
    pub fn send(&mut self, to: NodeId, message: Message<S>) {
        self.send_shared(to, Arc::new(message));
    }

    /// Sends one message, shared, to a peer (the same message to many peers).
    pub fn send_shared(&mut self, to: NodeId, message: Arc<Message<S>>) {
        self.actions.push_back(Action::Send { to, message });
    }

    /// Publishes `message` on the topic.
    pub fn publish(&mut self, message: Message<S>) {
        self.actions.push_back(Action::Publish {
            message: Arc::new(message),
        });
    }

    /// Asks for a wake-up at `at`.
    pub fn schedule_wake(&mut self, at: Time) {
        self.actions.push_back(Action::ScheduleWake { at });
    }

    /// The oldest action, for the driver.
    pub fn pop(&mut self) -> Option<Action<S>> {
        self.actions.pop_front()
    }

    /// Forgets every action not yet taken (a restart drops volatile state).
    pub fn clear(&mut self) {
        self.actions.clear();
    }
}
