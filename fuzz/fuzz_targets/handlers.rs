//! Arbitrary bytes as a request of a served API (first byte: which API of `SUPPORTED`, second: which
//! of its versions, the rest: the body), decoded and handled by one in-process broker that lives for
//! the whole run, so state (topics, groups, producers) builds up across inputs as it would.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::{Arc, OnceLock};
use streamhouse_broker::config::BrokerConfig;
use streamhouse_broker::handlers::{fuzz_frame, serve_frame};
use streamhouse_broker::Broker;

struct State {
    rt: tokio::runtime::Runtime,
    broker: Arc<Broker>,
    _dir: tempfile::TempDir,
}

fn state() -> &'static State {
    static STATE: OnceLock<State> = OnceLock::new();
    STATE.get_or_init(|| {
        // Time is paused: long-poll fetches and group timers run out at once when nothing else runs.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .expect("runtime");
        let dir = tempfile::tempdir_in("/dev/shm").or_else(|_| tempfile::tempdir()).expect("dir");
        let args = BrokerConfig::test_args(dir.path().to_path_buf()).set("sync_metadata", false);
        let broker = rt
            .block_on(async { Broker::open(BrokerConfig::resolve(args).expect("config")).await })
            .expect("broker");
        State { rt, broker, _dir: dir }
    })
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let s = state();
    let frame = fuzz_frame(data[0], data[1], &data[2..]);
    s.rt.block_on(async {
        let _ = tokio::time::timeout(
            std::time::Duration::from_secs(60),
            serve_frame(&s.broker, frame),
        )
        .await;
    });
});
