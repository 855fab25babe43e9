//! Issue 9.8 harness: produce latency on one connection while many KIP-848 members heartbeat on
//! others. It prints the numbers and asserts only correctness (every produce acknowledged, the
//! members end up owning every partition exactly once), never timing.
//!
//! Defaults keep it short for the test command; the measurement in the issue is
//! `GROUP_LOAD_MEMBERS=400 GROUP_LOAD_PARTITIONS=10000 GROUP_LOAD_SECS=30`, and
//! `GROUP_LOAD_ADDR=host:port` points it at a running broker (say an older binary) instead of an
//! in-process one. `GROUP_LOAD_HEARTBEAT_MS` (default 1000) is how often each member heartbeats.

mod support;

use kafka_protocol::messages::*;
use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::*;
use tokio::sync::Mutex;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A connection that waits up to a minute for an answer (a loaded broker may be slow).
async fn connect(addr: SocketAddr) -> Client {
    Client::connect(addr)
        .await
        .with_timeout(Duration::from_secs(60))
}

/// Creates a topic, or finds it made already (a running broker given by GROUP_LOAD_ADDR).
async fn create_or_exists(c: &mut Client, name: &str, partitions: i32) {
    let req = CreateTopicsRequest::default()
        .with_timeout_ms(60_000)
        .with_topics(vec![create_topics_request::CreatableTopic::default()
            .with_name(TopicName(s(name)))
            .with_num_partitions(partitions)
            .with_replication_factor(1)]);
    let r: CreateTopicsResponse = c.must(ApiKey::CreateTopics, 7, &req).await;
    assert!(
        r.topics[0].error_code == 0 || r.topics[0].error_code == 36,
        "{:?}",
        r.topics[0].error_message
    );
}

fn one_record() -> bytes::Bytes {
    BatchBuilder::new()
        .record(Record::at(0).value("latency"))
        .build()
}

/// Produce round trips (acks=1) for `secs`, returning the latencies.
async fn produce_latencies(addr: SocketAddr, topic: &str, secs: u64) -> Vec<Duration> {
    let mut c = connect(addr).await;
    let data = one_record();
    let mut out = Vec::new();
    let end = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < end {
        let req = ProduceRequest::default()
            .with_acks(1)
            .with_timeout_ms(30_000)
            .with_topic_data(vec![produce_request::TopicProduceData::default()
                .with_name(TopicName(s(topic)))
                .with_partition_data(vec![
                    produce_request::PartitionProduceData::default()
                        .with_index(0)
                        .with_records(Some(data.clone())),
                ])]);
        let t = Instant::now();
        let r: ProduceResponse = c.must(ApiKey::Produce, 9, &req).await;
        out.push(t.elapsed());
        assert_eq!(r.responses[0].partition_responses[0].error_code, 0);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    out
}

fn summary(name: &str, mut v: Vec<Duration>) -> String {
    v.sort();
    let at = |q: f64| v[((v.len() - 1) as f64 * q) as usize].as_secs_f64() * 1000.0;
    let line = format!(
        "{name}: {} produces, median {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        v.len(),
        at(0.5),
        at(0.99),
        at(1.0)
    );
    println!("{line}");
    line
}

type Owned = Arc<Mutex<HashMap<String, BTreeSet<(uuid::Uuid, i32)>>>>;

/// One KIP-848 member: joins, then heartbeats reporting what it owns, until `stopping` is set.
async fn member(
    addr: SocketAddr,
    group: String,
    topic: String,
    id: String,
    every: Duration,
    owned: Owned,
    stopping: Arc<std::sync::atomic::AtomicBool>,
) {
    let mut c = connect(addr).await;
    let mut epoch = 0;
    let mut mine: BTreeSet<(uuid::Uuid, i32)> = BTreeSet::new();
    loop {
        let tps = {
            let mut by_topic: HashMap<uuid::Uuid, Vec<i32>> = HashMap::new();
            for (t, p) in &mine {
                by_topic.entry(*t).or_default().push(*p);
            }
            by_topic
                .into_iter()
                .map(|(t, ps)| {
                    consumer_group_heartbeat_request::TopicPartitions::default()
                        .with_topic_id(t)
                        .with_partitions(ps)
                })
                .collect()
        };
        let mut req = ConsumerGroupHeartbeatRequest::default()
            .with_group_id(GroupId(s(&group)))
            .with_member_id(s(&id))
            .with_member_epoch(epoch)
            .with_rebalance_timeout_ms(if epoch == 0 { 60_000 } else { -1 })
            .with_topic_partitions(Some(tps));
        if epoch == 0 {
            req = req.with_subscribed_topic_names(Some(vec![TopicName(s(&topic))]));
        }
        let r: ConsumerGroupHeartbeatResponse =
            c.must(ApiKey::ConsumerGroupHeartbeat, 1, &req).await;
        if r.error_code != 0 {
            // Fenced or unknown: join again with nothing.
            epoch = 0;
            mine.clear();
        } else {
            epoch = r.member_epoch;
            if let Some(a) = r.assignment {
                mine = a
                    .topic_partitions
                    .iter()
                    .flat_map(|tp| tp.partitions.iter().map(move |p| (tp.topic_id, *p)))
                    .collect();
            }
        }
        owned.lock().await.insert(id.clone(), mine.clone());
        if stopping.load(std::sync::atomic::Ordering::SeqCst) {
            break;
        }
        tokio::time::sleep(every).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kip848_heartbeats_and_produce_latency() {
    let members = env("GROUP_LOAD_MEMBERS", 40) as usize;
    let partitions = env("GROUP_LOAD_PARTITIONS", 1000) as i32;
    let secs = env("GROUP_LOAD_SECS", 4);
    let every = Duration::from_millis(env("GROUP_LOAD_HEARTBEAT_MS", 1000));
    let mut _broker = None;
    let addr: SocketAddr = match std::env::var("GROUP_LOAD_ADDR") {
        Ok(a) => a.parse().unwrap(),
        Err(_) => _broker.insert(start().await).addr,
    };
    let run = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
    let (lat, work) = (format!("lat-{run}"), format!("work-{run}"));
    let mut admin = connect(addr).await;
    create_or_exists(&mut admin, &lat, 1).await;
    create_or_exists(&mut admin, &work, partitions).await;
    let quiet = summary("no group", produce_latencies(addr, &lat, secs).await);

    let owned: Owned = Arc::new(Mutex::new(HashMap::new()));
    let stopping = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let group = format!("load-{run}");
    let mut tasks = Vec::new();
    for i in 0..members {
        tasks.push(tokio::spawn(member(
            addr,
            group.clone(),
            work.clone(),
            format!("{run}-member-{i:04}"),
            every,
            owned.clone(),
            stopping.clone(),
        )));
    }
    let busy = summary(
        &format!("{members} KIP-848 members on {partitions} partitions joining and heartbeating"),
        produce_latencies(addr, &lat, secs).await,
    );
    // Liveness bound for the group to settle: every partition owned by exactly one member.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let all: Vec<(uuid::Uuid, i32)> = owned.lock().await.values().flatten().copied().collect();
        let distinct: BTreeSet<_> = all.iter().collect();
        if all.len() == partitions as usize && distinct.len() == all.len() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "group did not settle: {} owned, {} distinct of {partitions}",
            all.len(),
            distinct.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let steady = summary(
        "the same group settled, heartbeating",
        produce_latencies(addr, &lat, secs).await,
    );
    stopping.store(true, std::sync::atomic::Ordering::SeqCst);
    for t in tasks {
        t.abort();
    }
    eprintln!("{quiet}\n{busy}\n{steady}");
}
