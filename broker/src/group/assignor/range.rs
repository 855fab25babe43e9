//! The `range` assignor (Kafka's RangeAssignor on the broker side): each topic on its own, its
//! subscribers in member id order each get one contiguous range of partitions, the first
//! (partitions mod subscribers) of them one more. Members with the same subscriptions therefore get
//! the same partition numbers of every topic (co-partitioning, what joins over keyed topics need).
//! Not sticky: the ranges follow from the member ids alone.
//!
//! Cost: O(partitions + subscribers) per topic.

use std::collections::HashMap;

use super::{Assignor, GroupSpec};
use crate::group::consumer::Assignment;

pub struct Range;

impl Assignor for Range {
    fn name(&self) -> &'static str {
        "range"
    }

    fn assign(&self, spec: &GroupSpec) -> HashMap<String, Assignment> {
        let mut target = spec.empty_target();
        for (&topic, &partitions) in spec.topics {
            let candidates = spec.subscribers(topic);
            if candidates.is_empty() {
                continue;
            }
            let n = candidates.len() as i32;
            let (per, extra) = (partitions / n, partitions % n);
            let mut next = 0;
            for (i, id) in candidates.iter().enumerate() {
                let count = per + i32::from((i as i32) < extra);
                if count > 0 {
                    if let Some(a) = target.get_mut(*id) {
                        a.entry(topic).or_default().extend(next..next + count);
                    }
                }
                next += count;
            }
        }
        target
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::*;
    use super::*;

    /// Contiguous ranges per topic in member id order, the first members one extra; the same
    /// ranges of every topic for members with the same subscriptions.
    #[test]
    fn contiguous_ranges_per_topic() {
        let ts = topics(&[(1, 7), (2, 3)]);
        let none = HashMap::new();
        let s = spec(
            &[("c", &[1, 2]), ("a", &[1, 2]), ("b", &[1, 2])],
            &ts,
            &none,
        );
        let target = Range.assign(&s);
        assert_complete(&s, &target);
        assert_eq!(partitions(&target["a"], 1), vec![0, 1, 2]);
        assert_eq!(partitions(&target["b"], 1), vec![3, 4]);
        assert_eq!(partitions(&target["c"], 1), vec![5, 6]);
        for (m, p) in [("a", 0), ("b", 1), ("c", 2)] {
            assert_eq!(partitions(&target[m], 2), vec![p], "co-partitioned");
        }
    }

    /// Only a topic's subscribers share its partitions; more subscribers than partitions leaves
    /// the last ones without.
    #[test]
    fn ranges_among_subscribers_only() {
        let ts = topics(&[(1, 4), (2, 1)]);
        let none = HashMap::new();
        let s = spec(&[("a", &[1]), ("b", &[1, 2]), ("c", &[2])], &ts, &none);
        let target = Range.assign(&s);
        assert_complete(&s, &target);
        assert_eq!(partitions(&target["a"], 1), vec![0, 1]);
        assert_eq!(partitions(&target["b"], 1), vec![2, 3]);
        assert_eq!(partitions(&target["b"], 2), vec![0]);
        assert!(target["c"].is_empty(), "one partition, b sorts first");
    }
}
