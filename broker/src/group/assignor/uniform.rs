//! The `uniform` assignor (Kafka's UniformAssignor, the default): each topic's partitions are
//! spread evenly over its subscribers, and kept where they were. Stickiness: a partition stays with
//! its previous owner if that member still subscribes and holds fewer than its share of the topic
//! (ceil(partitions / subscribers)), so a member joining or leaving moves only what balance needs.
//! The rest go one at a time to the subscriber with the fewest of this topic, then the fewest
//! overall, then the smallest id: counts per topic differ by at most one, and across topics the
//! ties go to whoever has least.
//!
//! Cost: O(partitions x log subscribers) per topic.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use uuid::Uuid;

use super::{Assignor, GroupSpec};
use crate::group::consumer::Assignment;

pub struct Uniform;

impl Assignor for Uniform {
    fn name(&self) -> &'static str {
        "uniform"
    }

    fn assign(&self, spec: &GroupSpec) -> HashMap<String, Assignment> {
        let prev_owner: HashMap<(Uuid, i32), &str> = spec
            .previous
            .iter()
            .flat_map(|(id, a)| {
                a.iter()
                    .flat_map(move |(t, ps)| ps.iter().map(move |p| ((*t, *p), id.as_str())))
            })
            .collect();
        let mut target = spec.empty_target();
        // Partitions held across all topics so far, per member.
        let mut totals: HashMap<&str, usize> = HashMap::new();
        for (&topic, &partitions) in spec.topics {
            let candidates = spec.subscribers(topic);
            if candidates.is_empty() {
                continue;
            }
            let quota = (partitions as usize).div_ceil(candidates.len());
            let eligible: HashSet<&str> = candidates.iter().copied().collect();
            let mut per_topic: HashMap<&str, usize> = HashMap::new();
            let mut unassigned = Vec::new();
            for p in 0..partitions {
                let kept = prev_owner
                    .get(&(topic, p))
                    .copied()
                    .filter(|id| eligible.contains(id))
                    .filter(|id| per_topic.get(id).copied().unwrap_or(0) < quota);
                match kept {
                    Some(id) => {
                        give(&mut target, id, topic, p);
                        *per_topic.entry(id).or_default() += 1;
                        *totals.entry(id).or_default() += 1;
                    }
                    None => unassigned.push(p),
                }
            }
            let mut heap: BinaryHeap<Reverse<(usize, usize, &str)>> = candidates
                .iter()
                .map(|id| {
                    Reverse((
                        per_topic.get(id).copied().unwrap_or(0),
                        totals.get(id).copied().unwrap_or(0),
                        *id,
                    ))
                })
                .collect();
            for p in unassigned {
                let Some(Reverse((mine, total, id))) = heap.pop() else {
                    break;
                };
                give(&mut target, id, topic, p);
                *totals.entry(id).or_default() += 1;
                heap.push(Reverse((mine + 1, total + 1, id)));
            }
        }
        target
    }
}

fn give(target: &mut HashMap<String, Assignment>, id: &str, topic: Uuid, p: i32) {
    if let Some(a) = target.get_mut(id) {
        a.entry(topic).or_default().insert(p);
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::*;
    use super::*;

    /// Counts per topic differ by at most one, and with the same subscriptions, counts across
    /// topics too.
    #[test]
    fn balanced_per_topic_and_overall() {
        let ts = topics(&[(1, 7), (2, 2), (3, 2)]);
        let none = HashMap::new();
        let s = spec(
            &[("a", &[1, 2, 3]), ("b", &[1, 2, 3]), ("c", &[1, 2, 3])],
            &ts,
            &none,
        );
        let target = Uniform.assign(&s);
        assert_complete(&s, &target);
        for t in 1..=3 {
            let counts: Vec<usize> = ["a", "b", "c"]
                .iter()
                .map(|m| partitions(&target[*m], t).len())
                .collect();
            let (lo, hi) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
            assert!(hi - lo <= 1, "topic {t}: {counts:?}");
        }
        let totals: Vec<usize> = ["a", "b", "c"].iter().map(|m| count(&target[*m])).collect();
        assert_eq!(totals.iter().sum::<usize>(), 11);
        let (lo, hi) = (totals.iter().min().unwrap(), totals.iter().max().unwrap());
        assert!(hi - lo <= 1, "overall: {totals:?}");
    }

    /// Sticky (as Kafka's uniform assignor): the same group gets the same target again, and a
    /// member joining takes only its share, each partition it takes coming from someone over
    /// theirs; the others keep a subset of what they had.
    #[test]
    fn sticky_when_members_come_and_go() {
        let ts = topics(&[(1, 6)]);
        let none = HashMap::new();
        let two = spec(&[("b", &[1]), ("c", &[1])], &ts, &none);
        let first = Uniform.assign(&two);
        assert_eq!((count(&first["b"]), count(&first["c"])), (3, 3));
        let again = Uniform.assign(&spec(&[("b", &[1]), ("c", &[1])], &ts, &first));
        assert_eq!(again, first, "nothing moves when nothing changed");
        // "a" sorts first, so without stickiness it would take b's partitions in order.
        let three = spec(&[("a", &[1]), ("b", &[1]), ("c", &[1])], &ts, &first);
        let next = Uniform.assign(&three);
        assert_complete(&three, &next);
        for m in ["b", "c"] {
            let kept = partitions(&next[m], 1);
            assert_eq!(kept.len(), 2);
            assert!(
                kept.iter().all(|p| partitions(&first[m], 1).contains(p)),
                "{m} kept its own"
            );
        }
        assert_eq!(count(&next["a"]), 2, "the newcomer's share, one from each");
        // c leaves: its partitions go to the others, who keep theirs.
        let after = Uniform.assign(&spec(&[("a", &[1]), ("b", &[1])], &ts, &next));
        for m in ["a", "b"] {
            assert_eq!(count(&after[m]), 3);
            assert!(partitions(&next[m], 1)
                .iter()
                .all(|p| partitions(&after[m], 1).contains(p)));
        }
    }

    /// A previous owner that no longer subscribes keeps nothing of the topic.
    #[test]
    fn unsubscribed_owner_gives_partitions_up() {
        let ts = topics(&[(1, 4), (2, 2)]);
        let none = HashMap::new();
        let first = Uniform.assign(&spec(&[("a", &[1, 2]), ("b", &[1, 2])], &ts, &none));
        let s = spec(&[("a", &[2]), ("b", &[1, 2])], &ts, &first);
        let next = Uniform.assign(&s);
        assert_complete(&s, &next);
        assert!(partitions(&next["a"], 1).is_empty());
        assert_eq!(partitions(&next["b"], 1), vec![0, 1, 2, 3]);
        assert_eq!(
            partitions(&next["a"], 2),
            partitions(&first["a"], 2),
            "kept topic 2"
        );
    }
}
