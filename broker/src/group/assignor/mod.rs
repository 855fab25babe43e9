//! Server-side assignors of KIP-848 groups (Kafka's ConsumerGroupPartitionAssignor): from the
//! members' subscriptions, the subscribed topics' partitions and the previous target, an assignor
//! computes the group's new target assignment. A member names the one it wants in
//! ConsumerGroupHeartbeat's ServerAssignor; Kafka's group.consumer.assignors default serves
//! `uniform` (the default, sticky) and `range`, and anything else is UNSUPPORTED_ASSIGNOR.
//!
//! An assignor is a pure function of its [`GroupSpec`]: no clock, no storage, no randomness, so
//! the same spec always gives the same target (every broker would compute the same one).

mod range;
mod uniform;

use std::collections::{BTreeMap, HashMap, HashSet};
use uuid::Uuid;

use super::consumer::Assignment;

/// What an assignor is given.
pub struct GroupSpec<'a> {
    /// The members, sorted by id.
    pub members: Vec<MemberSpec>,
    /// Partition count of every topic some member subscribes to, by topic id.
    pub topics: &'a BTreeMap<Uuid, i32>,
    /// The previous target: member id -> assignment (what a sticky assignor keeps).
    pub previous: &'a HashMap<String, Assignment>,
}

/// A member as an assignor sees it: its id and the (existing) topics it subscribes to.
pub struct MemberSpec {
    pub id: String,
    pub topics: HashSet<Uuid>,
}

impl GroupSpec<'_> {
    /// Members subscribed to `topic`, in id order.
    pub fn subscribers(&self, topic: Uuid) -> Vec<&str> {
        self.members
            .iter()
            .filter(|m| m.topics.contains(&topic))
            .map(|m| m.id.as_str())
            .collect()
    }

    /// An empty target for every member (an assignor fills it in).
    pub fn empty_target(&self) -> HashMap<String, Assignment> {
        self.members
            .iter()
            .map(|m| (m.id.clone(), Assignment::new()))
            .collect()
    }
}

/// A server-side assignor.
pub trait Assignor: Sync {
    /// The name members ask for (ServerAssignor) and ConsumerGroupDescribe reports.
    fn name(&self) -> &'static str;

    /// The target assignment: member id -> assignment, for every member of the spec (empty ones
    /// included); every partition of `spec.topics` that has a subscriber goes to exactly one of them.
    fn assign(&self, spec: &GroupSpec) -> HashMap<String, Assignment>;
}

/// The served assignors, in Kafka's group.consumer.assignors order: the first is the default.
static ASSIGNORS: [&dyn Assignor; 2] = [&uniform::Uniform, &range::Range];

/// The assignor a group uses when no member names one (Kafka: the first of group.consumer.assignors).
pub fn default_assignor() -> &'static dyn Assignor {
    ASSIGNORS[0]
}

/// The served assignor of that name.
pub fn by_name(name: &str) -> Option<&'static dyn Assignor> {
    ASSIGNORS.iter().copied().find(|a| a.name() == name)
}

/// Names of the served assignors, for error messages.
pub fn names() -> Vec<&'static str> {
    ASSIGNORS.iter().map(|a| a.name()).collect()
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use std::collections::BTreeSet;

    /// Topic ids 1, 2, ... as Uuids (ordered like their numbers).
    pub fn topic(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }

    /// A spec of members (id, subscribed topic numbers) over topics (number, partitions).
    pub fn spec<'a>(
        members: &[(&str, &[u128])],
        topics: &'a BTreeMap<Uuid, i32>,
        previous: &'a HashMap<String, Assignment>,
    ) -> GroupSpec<'a> {
        let mut members: Vec<MemberSpec> = members
            .iter()
            .map(|(id, ts)| MemberSpec {
                id: id.to_string(),
                topics: ts.iter().map(|t| topic(*t)).collect(),
            })
            .collect();
        members.sort_by(|a, b| a.id.cmp(&b.id));
        GroupSpec {
            members,
            topics,
            previous,
        }
    }

    pub fn topics(list: &[(u128, i32)]) -> BTreeMap<Uuid, i32> {
        list.iter().map(|(t, n)| (topic(*t), *n)).collect()
    }

    pub fn count(a: &Assignment) -> usize {
        a.values().map(|s| s.len()).sum()
    }

    pub fn partitions(a: &Assignment, t: u128) -> Vec<i32> {
        a.get(&topic(t))
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default()
    }

    /// Every partition of every topic with a subscriber is assigned exactly once, to a subscriber.
    pub fn assert_complete(spec: &GroupSpec, target: &HashMap<String, Assignment>) {
        assert_eq!(
            target.len(),
            spec.members.len(),
            "a target for every member"
        );
        for (t, n) in spec.topics {
            let subscribers = spec.subscribers(*t);
            let mut seen = BTreeSet::new();
            for (id, a) in target {
                for p in a.get(t).into_iter().flatten() {
                    assert!(subscribers.contains(&id.as_str()), "{id} is not subscribed");
                    assert!(seen.insert(*p), "partition {p} assigned twice");
                }
            }
            let want: BTreeSet<i32> = if subscribers.is_empty() {
                BTreeSet::new()
            } else {
                (0..*n).collect()
            };
            assert_eq!(seen, want, "every partition of {t}");
        }
    }

    /// The names members may ask for, Kafka's default first; nothing else is served.
    #[test]
    fn assignors_by_name() {
        assert_eq!(names(), vec!["uniform", "range"]);
        assert_eq!(default_assignor().name(), "uniform");
        assert_eq!(by_name("range").map(|a| a.name()), Some("range"));
        assert!(by_name("sticky").is_none());
        assert!(by_name("").is_none());
    }

    /// Both assignors give every subscribed partition to one subscriber, and nothing to a member
    /// of no existing topic.
    #[test]
    fn every_assignor_is_complete() {
        let ts = topics(&[(1, 5), (2, 3), (3, 0)]);
        let none = HashMap::new();
        let members: &[(&str, &[u128])] =
            &[("a", &[1, 2]), ("b", &[1]), ("c", &[2, 3]), ("d", &[])];
        for a in ASSIGNORS {
            let s = spec(members, &ts, &none);
            let target = a.assign(&s);
            assert_complete(&s, &target);
            assert!(target["d"].is_empty(), "{}", a.name());
        }
    }
}
