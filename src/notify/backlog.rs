//! Which input partitions to pause: notify never waits on one channel;
//! instead, a channel whose queue grows past its bound pauses the
//! partitions that feed it, and a Slack outage pauses everything. Too many
//! unfinished messages first only stop the dispatcher reading (see
//! [`Backlog::full`]); everything is paused when that lasts. Resuming
//! waits until the queue is half drained, so partitions do not flap.

use std::collections::{BTreeSet, HashMap};

#[derive(Debug, Default)]
struct ChannelLoad {
    queued: usize,
    /// Queued messages per partition they came from.
    from: HashMap<i32, usize>,
    overloaded: bool,
}

#[derive(Debug)]
pub struct Backlog {
    max_per_channel: usize,
    max_total: usize,
    channels: HashMap<String, ChannelLoad>,
    /// How many of `channels` are overloaded: with none (and nothing
    /// paused for being full), nothing is to be paused without looking at
    /// each.
    overloaded: usize,
    total: usize,
    /// Everything paused, the backlog having stayed full, until half of it
    /// is done.
    paused_while_full: bool,
}

impl Backlog {
    pub fn new(max_per_channel: usize, max_total: usize) -> Backlog {
        Backlog {
            max_per_channel: max_per_channel.max(1),
            max_total: max_total.max(1),
            channels: HashMap::new(),
            overloaded: 0,
            total: 0,
            paused_while_full: false,
        }
    }

    pub fn added(&mut self, channel: &str, partition: i32) {
        let load = self.channels.entry(channel.to_owned()).or_default();
        load.queued += 1;
        *load.from.entry(partition).or_default() += 1;
        if load.queued >= self.max_per_channel && !load.overloaded {
            load.overloaded = true;
            self.overloaded += 1;
        }
        self.total += 1;
    }

    pub fn removed(&mut self, channel: &str, partition: i32) {
        if let Some(load) = self.channels.get_mut(channel) {
            load.queued = load.queued.saturating_sub(1);
            if let Some(n) = load.from.get_mut(&partition) {
                *n -= 1;
                if *n == 0 {
                    load.from.remove(&partition);
                }
            }
            if load.queued <= self.max_per_channel / 2 && load.overloaded {
                load.overloaded = false;
                self.overloaded -= 1;
            }
            if load.queued == 0 {
                self.channels.remove(channel);
            }
        }
        self.total = self.total.saturating_sub(1);
        if self.total <= self.max_total / 2 {
            self.paused_while_full = false;
        }
    }

    pub fn total(&self) -> usize {
        self.total
    }

    /// As many messages unfinished as allowed: the dispatcher reads no more
    /// until one finishes. Pausing instead would cost the whole pre-fetch:
    /// librdkafka drops a paused partition's fetched messages, and after
    /// the resume its next ones came 0.3–0.7 s later, when the half left
    /// in flight had drained in a third of a second (`docs/PERFORMANCE.md`,
    /// nineteenth round).
    pub fn full(&self) -> bool {
        self.total >= self.max_total
    }

    /// Pauses every partition until half the unfinished messages are done:
    /// for when the backlog stays [`full`](Self::full), so that the
    /// consumer can be polled (rebalances, the group's liveness) without
    /// taking more.
    pub fn pause_while_full(&mut self) {
        if self.full() {
            self.paused_while_full = true;
        }
    }

    /// Whether everything is paused for being full: reading is safe again
    /// (a paused partition yields nothing more).
    pub fn paused_while_full(&self) -> bool {
        self.paused_while_full
    }

    pub fn queued(&self, channel: &str) -> usize {
        self.channels.get(channel).map_or(0, |l| l.queued)
    }

    /// Whether [`Backlog::to_pause`] is empty whatever is assigned, unless
    /// Slack is unreachable: what the dispatcher asks after every message,
    /// without building the set.
    pub fn pauses_nothing(&self) -> bool {
        !self.paused_while_full && self.overloaded == 0
    }

    /// The partitions of `assigned` to keep paused now.
    pub fn to_pause(&self, assigned: &BTreeSet<i32>, slack_unreachable: bool) -> BTreeSet<i32> {
        if slack_unreachable || self.paused_while_full {
            return assigned.clone();
        }
        if self.overloaded == 0 {
            return BTreeSet::new();
        }
        self.channels
            .values()
            .filter(|load| load.overloaded)
            .flat_map(|load| load.from.keys().copied())
            .filter(|p| assigned.contains(p))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assigned(ps: &[i32]) -> BTreeSet<i32> {
        ps.iter().copied().collect()
    }

    #[test]
    fn a_full_channel_pauses_only_its_partitions_until_half_drained() {
        let mut b = Backlog::new(4, 100);
        let all = assigned(&[0, 1, 2]);
        for _ in 0..3 {
            b.added("busy", 0);
        }
        b.added("quiet", 1);
        assert!(b.to_pause(&all, false).is_empty());
        assert!(b.pauses_nothing());
        b.added("busy", 0);
        assert_eq!(b.to_pause(&all, false), assigned(&[0]));
        assert!(!b.pauses_nothing());
        b.added("busy", 0);
        b.removed("busy", 0);
        b.removed("busy", 0);
        assert_eq!(b.to_pause(&all, false), assigned(&[0]), "not yet half");
        assert!(!b.pauses_nothing());
        b.removed("busy", 0);
        assert!(b.to_pause(&all, false).is_empty(), "half drained: resume");
        assert!(b.pauses_nothing());
        assert_eq!(b.queued("busy"), 2);
        assert_eq!(b.total(), 3);
    }

    #[test]
    fn a_slack_outage_pauses_everything() {
        let b = Backlog::new(100, 4);
        let all = assigned(&[0, 1]);
        assert_eq!(b.to_pause(&all, true), all, "outage");
        assert!(b.to_pause(&all, false).is_empty());
    }

    #[test]
    fn too_much_in_flight_stops_reading_and_pauses_everything_only_when_asked() {
        let mut b = Backlog::new(100, 4);
        let all = assigned(&[0, 1]);
        for c in ["a", "b", "c"] {
            b.added(c, 0);
        }
        b.pause_while_full();
        assert!(
            !b.full() && !b.paused_while_full(),
            "not full: nothing to pause"
        );
        b.added("d", 1);
        assert!(b.full());
        assert!(b.pauses_nothing(), "full alone pauses nothing");
        assert!(b.to_pause(&all, false).is_empty());
        b.pause_while_full();
        assert!(b.paused_while_full());
        assert_eq!(b.to_pause(&all, false), all);
        assert!(!b.pauses_nothing());
        b.removed("a", 0);
        assert!(!b.full());
        assert_eq!(b.to_pause(&all, false), all, "not yet half");
        b.removed("b", 0);
        assert!(!b.paused_while_full(), "half drained: resume");
        assert!(b.to_pause(&all, false).is_empty());
        assert!(b.pauses_nothing());
    }

    #[test]
    fn revoked_partitions_are_not_paused() {
        let mut b = Backlog::new(1, 100);
        b.added("busy", 3);
        assert!(b.to_pause(&assigned(&[0]), false).is_empty());
    }
}
