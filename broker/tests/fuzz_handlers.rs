//! Property test over every served API (the list comes from `SUPPORTED`): arbitrary bodies, and
//! valid requests with bytes flipped, go through decoding and the handlers of an in-process broker.
//! The broker must answer or refuse, never panic, and stay able to serve. The long campaign is the
//! cargo-fuzz target in `fuzz/` (same entry points); this runs briefly in the test command.

use bytes::Bytes;
use proptest::prelude::*;
use std::sync::Arc;
use streamhouse_broker::handlers::{fuzz_frame, serve_frame, SUPPORTED};
use streamhouse_broker::Broker;

fn broker(rt: &tokio::runtime::Runtime, dir: &std::path::Path) -> Arc<Broker> {
    rt.block_on(streamhouse_test_support::broker::open(dir, |a| {
        a.set("sync_metadata", false)
    }))
}

fn run(rt: &tokio::runtime::Runtime, b: &Arc<Broker>, frame: Bytes) {
    rt.block_on(async {
        // A long-poll fetch may wait: time is paused, so it ends at once when nothing else runs.
        let _ =
            tokio::time::timeout(std::time::Duration::from_secs(60), serve_frame(b, frame)).await;
    });
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

    #[test]
    fn every_served_api_survives_arbitrary_bodies(
        pick in 0u8..=255,
        version in 0u8..=255,
        body in proptest::collection::vec(any::<u8>(), 0..200),
    ) {
        thread_local! {
            static STATE: (tokio::runtime::Runtime, tempfile::TempDir, std::cell::OnceCell<Arc<Broker>>) = (
                tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().unwrap(),
                tempfile::tempdir().unwrap(),
                std::cell::OnceCell::new(),
            );
        }
        STATE.with(|(rt, dir, b)| {
            let b = b.get_or_init(|| broker(rt, dir.path()));
            run(rt, b, fuzz_frame(pick, version, &body));
        });
    }
}

/// Every API at every served version with an empty body (a default request for most) is answered.
#[test]
fn the_fuzz_entry_reaches_every_served_api() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let b = broker(&rt, dir.path());
    let mut answered = 0;
    for (i, spec) in SUPPORTED.iter().enumerate() {
        for v in 0..=(spec.max - spec.min) {
            // A body of zeros decodes as an all-default request for most APIs and versions.
            let frame = fuzz_frame(i as u8, v as u8, &[0u8; 64]);
            let got = rt.block_on(async {
                tokio::time::timeout(std::time::Duration::from_secs(60), serve_frame(&b, frame))
                    .await
            });
            if matches!(got, Ok(Some(_))) {
                answered += 1;
            }
        }
    }
    let versions: i16 = SUPPORTED.iter().map(|s| s.max - s.min + 1).sum();
    assert!(
        answered * 2 >= versions,
        "only {answered} of {versions} api versions answered a zero body"
    );
}
