//! A lock directory's contender nodes in queue order: every kind (mutex,
//! read, write) in one queue, sorted by the sequence number ZooKeeper gave
//! each at creation.
//!
//! One queue for all kinds is what makes our mutex and both sides of our
//! reader/writer lock exclude each other on one key: a contender never
//! passes a node created before it, whatever its kind. Who holds and whom a
//! waiter watches is decided by [`reader_writer`](crate::reader_writer).

use crate::client::Session;
use crate::layout::NodeKind;
use crate::reader_writer;

/// One contender node of a lock directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Contender<'a> {
    /// The node's name in its directory.
    pub(crate) name: &'a str,
    /// What it asks for.
    pub(crate) kind: NodeKind,
    sequence: u64,
}

/// The node a waiting contender watches, and whether its deletion alone
/// makes the waiter a holder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Blocker<'a> {
    /// The watched node's name.
    pub(crate) name: &'a str,
    /// No other node stands between the waiter and its grant. Nodes created
    /// later sort after the waiter (the directory cannot be reaped and made
    /// again while the waiter's node is in it), so once this one is gone the
    /// waiter holds, with no listing needed to confirm it.
    pub(crate) last: bool,
}

/// The contender nodes of one directory listing, lowest sequence first.
#[derive(Debug)]
pub(crate) struct Queue<'a> {
    contenders: Vec<Contender<'a>>,
}

impl<'a> Queue<'a> {
    /// Every contender among `children`, as every client sees them.
    pub(crate) fn new(children: &'a [String]) -> Self {
        Self::without(children, |_| false)
    }

    /// The contenders among `children` of `dir` as `session` queues behind
    /// them: without the nodes it is deleting (see
    /// [`Withdrawn`](crate::cleanup::Withdrawn)).
    pub(crate) fn seen_by(session: &Session, dir: &str, children: &'a [String]) -> Self {
        Self::without(children, |child| session.withdrawn.contains(dir, child))
    }

    fn without(children: &'a [String], skip: impl Fn(&str) -> bool) -> Self {
        let mut contenders: Vec<Contender<'a>> = children
            .iter()
            .filter(|child| !skip(child))
            .filter_map(|child| {
                NodeKind::parse(child).map(|(kind, sequence)| Contender { name: child, kind, sequence })
            })
            .collect();
        contenders.sort_by_key(|contender| contender.sequence);
        Self { contenders }
    }

    /// Where the node `name` stands, if it is queued.
    pub(crate) fn position(&self, name: &str) -> Option<usize> {
        self.contenders.iter().position(|contender| contender.name == name)
    }

    /// The nodes holding the key now, lowest sequence (and token) first.
    pub(crate) fn holders(&self) -> &[Contender<'a>] {
        reader_writer::holding(&self.contenders)
    }

    /// The node the contender at `position` waits for; `None` when it holds.
    pub(crate) fn blocker(&self, position: usize) -> Option<Blocker<'a>> {
        reader_writer::blocker(&self.contenders, position)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A listing of nodes named by kind (`m`, `r`, `w`) in this order, with
    /// sequence numbers 1, 2, ...; shuffled, as ZooKeeper lists them.
    pub(crate) fn listing(kinds: &str) -> Vec<String> {
        let mut names: Vec<String> = kinds
            .chars()
            .enumerate()
            .map(|(index, kind)| {
                let marker = match kind {
                    'm' => "lock-",
                    'r' => "__READ__",
                    _ => "__WRIT__",
                };
                format!("_c_{index}-{marker}{:010}", index + 1)
            })
            .collect();
        names.reverse();
        names.push("not-a-contender".to_owned());
        names
    }

    #[test]
    fn every_kind_queues_in_one_order_by_sequence() {
        let children = listing("rwmr");
        let queue = Queue::new(&children);
        let kinds: Vec<NodeKind> = queue.contenders.iter().map(|c| c.kind).collect();
        assert_eq!(kinds, [NodeKind::Read, NodeKind::Write, NodeKind::Mutex, NodeKind::Read]);
        assert_eq!(queue.position(&children[0]), Some(3));
        assert_eq!(queue.position("not-a-contender"), None);
    }
}
