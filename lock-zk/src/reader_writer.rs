//! Reader/writer locks, node for node Apache Curator 5.x's
//! `InterProcessReadWriteLock`, and how they queue with the mutex.
//!
//! A reader creates the ephemeral sequential node `_c_{guid}-__READ__{seq}`,
//! a writer `_c_{guid}-__WRIT__{seq}`, in the same lock directory as the
//! mutex's `_c_{guid}-lock-{seq}` (Curator's lock names, with the prefix of
//! its protected mode). Every node sorts by its sequence number
//! ([`Queue`](crate::queue::Queue)), and:
//!
//! * a writer or mutex contender holds when its node is the first of all,
//!   and otherwise watches the node just before it;
//! * a reader holds when no other kind of node (write or mutex) sorts
//!   before it, and otherwise watches the last such node before it. So
//!   readers share with readers only, and a waiting writer holds back every
//!   reader that queues after it: readers never starve a writer.
//!
//! Curator's reader watches the *first* write node before it rather than the
//! last; both look again when woken, so they differ only in how often a
//! reader behind several writers wakes.
//!
//! # Mixing with a mutex on one path
//!
//! Our mutex and our reader/writer lock exclude each other on one key: both
//! queue every kind of node by sequence, and a reader counts a mutex node as
//! a writer. Curator does not: its `InterProcessMutex` sorts names without
//! its own `lock-` marker after its own nodes, so it ignores reader and
//! writer nodes queued before it, and its `InterProcessReadWriteLock` ignores
//! `lock-` nodes the same way. As in Curator itself, a Curator mutex and a
//! reader/writer lock (Curator's or ours) on one path, or a Curator
//! reader/writer lock and our mutex, do not exclude each other: give each
//! path one recipe when Curator shares it.
//!
//! # Fencing
//!
//! Every grant's token is its node's `czxid`. A node is created before it
//! can hold and deleted only after it stopped holding, and within one
//! directory a later sequence means a later `czxid`. A writer (or mutex
//! contender) holds only once every node created before it is gone, and no
//! node created after it can hold before it has; a reader never holds while
//! a writer created before it exists. So a write grant's token exceeds every
//! earlier grant's, and a read grant's every earlier write grant's, as
//! [`LockMode`](lock_core::LockMode) requires.

use crate::layout::NodeKind;
use crate::queue::{Blocker, Contender};

/// The contenders at the head of `queue` that hold the key: the first node
/// alone, or, when it is a reader, every reader before the first node of
/// another kind.
pub(crate) fn holding<'q, 'a>(queue: &'q [Contender<'a>]) -> &'q [Contender<'a>] {
    let held = match queue.first() {
        None => 0,
        Some(first) if first.kind != NodeKind::Read => 1,
        Some(_) => queue.iter().take_while(|contender| contender.kind == NodeKind::Read).count(),
    };
    &queue[..held]
}

/// The node the contender at `position` of `queue` waits for: the node just
/// before a writer or mutex contender; the last write or mutex node before a
/// reader. `None` when it holds (or `position` is past the queue).
pub(crate) fn blocker<'a>(queue: &[Contender<'a>], position: usize) -> Option<Blocker<'a>> {
    let ours = queue.get(position)?;
    let ahead = queue.get(..position)?;
    if ours.kind == NodeKind::Read {
        let mut writers = ahead.iter().filter(|contender| contender.kind != NodeKind::Read);
        let count = writers.clone().count();
        writers.next_back().map(|last| Blocker { name: last.name, last: count == 1 })
    } else {
        ahead.last().map(|before| Blocker { name: before.name, last: position == 1 })
    }
}

#[cfg(test)]
mod tests {
    use crate::queue::Queue;
    use crate::queue::tests::listing;

    /// For each node of the queue `kinds` (in order): `.` when it holds,
    /// else the index of the node it watches and `!` when that one's
    /// deletion alone grants it.
    fn plan(kinds: &str) -> Vec<String> {
        let children = listing(kinds);
        let queue = Queue::new(&children);
        let mut names: Vec<&String> = children.iter().filter(|c| c.starts_with("_c_")).collect();
        names.sort_by_key(|name| name[name.len() - 10..].to_owned());
        (0..names.len())
            .map(|position| match queue.blocker(position) {
                None => ".".to_owned(),
                Some(blocker) => {
                    let watched = names.iter().position(|name| name.as_str() == blocker.name).unwrap_or(99);
                    format!("{watched}{}", if blocker.last { "!" } else { "" })
                }
            })
            .collect()
    }

    fn holders(kinds: &str) -> usize {
        let children = listing(kinds);
        Queue::new(&children).holders().len()
    }

    #[test]
    fn readers_share_until_the_first_writer_and_writers_wait_for_everyone() {
        assert_eq!(plan("rrr"), [".", ".", "."]);
        assert_eq!(plan("rrwr"), [".", ".", "1", "2!"]);
        assert_eq!(plan("wrrw"), [".", "0!", "0!", "2"]);
        assert_eq!(plan("wwr"), [".", "0!", "1"]);
        assert_eq!(plan("wrwr"), [".", "0!", "1", "2"]);
        assert_eq!(holders("rrwr"), 2);
        assert_eq!(holders("wrr"), 1);
        assert_eq!(holders(""), 0);
    }

    #[test]
    fn a_mutex_node_is_a_writer_to_readers_and_waits_for_everyone() {
        assert_eq!(plan("mrr"), [".", "0!", "0!"]);
        assert_eq!(plan("rm"), [".", "0!"]);
        assert_eq!(plan("rrmw"), [".", ".", "1", "2"]);
        assert_eq!(holders("mr"), 1);
        assert_eq!(holders("rrm"), 2);
    }
}
