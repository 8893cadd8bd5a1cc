//! `cmd/replay` under load, against the real binary and a real mosquitto: a storm of replay
//! requests with long `reply_to` topics is answered (each served or refused with a reason), the
//! served ones get the journal unchanged and in order, and a live critical alarm raised while
//! they run reaches a subscriber before they finish.
//!
//! Memory and latency during such a storm are measured, not asserted: `cargo bench --bench
//! replay`.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use common::*;
use emberwatch::outbox::{Entry, Kind, Options, Outbox};

const STATUS: &str = "emberwatch/test-site/gateways/gw-t/status";
const REPLAY: &str = "emberwatch/test-site/gateways/gw-t/cmd/replay";
const RESULT: &str = "emberwatch/test-site/gateways/gw-t/cmd/result";
const ALARMS: &str = "emberwatch/test-site/alarms/";
const REPLIES: &str = "emberwatch/test-site/replies/";

/// Journaled events `1..=n`, confirmed by the broker `url`, as a gateway that raised them
/// earlier leaves its outbox: written before the gateway starts, so the test needs no hour of
/// alarms. Returns their payloads, which a replay must republish unchanged.
fn journal(storage: &Path, url: &str, n: u64) -> Vec<Vec<u8>> {
    let opts = Options::new(64 << 20, 16 << 20, Duration::from_secs(24 * 3600));
    let mut o = Outbox::open(storage, opts, &[url.to_string()]).expect("outbox");
    let mut payloads = Vec::new();
    for chunk in (1..=n).collect::<Vec<u64>>().chunks(500) {
        let entries: Vec<Entry> = chunk
            .iter()
            .map(|&seq| Entry {
                kind: Kind::Event,
                seq,
                topic: format!("{ALARMS}room-1/rack-01/cell_temp_max/cell-overtemp"),
                retain: false,
                payload: format!(
                    r#"{{"event_id":"gw-t-{seq}","seq":{seq},"alarm":"rack-01/cell_temp_max/cell-overtemp","state":"cleared","message":"{}"}}"#,
                    "journaled ".repeat(30)
                )
                .into_bytes(),
            })
            .collect();
        for r in o.append(entries).expect("append") {
            o.ack(url, r.pos).expect("ack");
            payloads.push(r.payload.clone());
        }
    }
    o.commit().expect("commit");
    payloads
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_storm_is_answered_and_a_live_alarm_goes_first() {
    // Unlimited queues: the subscriber must see everything that was sent, to check it.
    let broker = Mosquitto::start_custom(|port| {
        format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n\
             max_queued_messages 0\nlog_dest stderr\n"
        )
    })
    .await;
    let port = broker.port();
    let sim = Sim::start("normal", 1).await;
    let storage = tempfile::tempdir().expect("tempdir");
    let held = 8000;
    let payloads = journal(storage.path(), &format!("mqtt://127.0.0.1:{port}"), held);
    let mut sub = Subscriber::connect(port, "emberwatch/test-site/#").await;
    let _daemon = Daemon::start(&gateway_config(port, sim.port(), storage.path(), ""));
    let status = sub
        .expect_where(STATUS, |j| j["state"] == "online", Duration::from_secs(15))
        .await;
    assert_eq!(status["seq"], held, "{status}");

    // Eight subscribers repairing a gap at once, each with a 1000-character reply_to.
    let requests = 8;
    let reply_to = |i: usize| format!("{REPLIES}{i}/{}", "x".repeat(1000));
    for i in 0..requests {
        let body = format!(r#"{{"from_seq": 1, "reply_to": "{}"}}"#, reply_to(i));
        publish(port, REPLAY, body.as_bytes(), false).await;
    }
    // The replays are running: now a live critical alarm.
    let Some(first) = sub
        .next_matching(|t, _| t.starts_with(REPLIES), Duration::from_secs(30))
        .await
    else {
        panic!("no replayed event; seen:\n{}", sub.seen_list());
    };
    sim.write(116, 600).await;

    let mut replies: BTreeMap<String, Vec<Vec<u8>>> = BTreeMap::new();
    replies.insert(first.topic, vec![first.payload]);
    let mut results = Vec::new();
    // Where in the stream of messages the live alarm, and each served replay's result, came.
    let (mut live_at, mut served_at) = (None, Vec::new());
    let mut n = 0usize;
    while results.len() < requests || live_at.is_none() {
        let Some(m) = sub
            .next_matching(|_, _| true, Duration::from_secs(60))
            .await
        else {
            panic!(
                "stalled: {} of {requests} answers, live alarm {live_at:?}; last seen:\n{}",
                results.len(),
                sub.seen_list()
            );
        };
        n += 1;
        if m.topic.starts_with(REPLIES) {
            replies.entry(m.topic.clone()).or_default().push(m.payload);
        } else if m.topic == RESULT && m.json()["command"] == "replay" {
            let j = m.json();
            if j["ok"] == true {
                served_at.push(n);
            }
            results.push(j);
        } else if m.topic.starts_with(ALARMS) && m.json()["seq"] == held + 1 {
            assert_eq!(m.json()["severity"], "critical", "{}", m.text());
            live_at = Some(n);
        }
    }
    for r in &results {
        let reason = r["reason"].as_str().unwrap_or_default();
        let served = r["ok"] == true
            && reason.starts_with(&format!("republished {held} event(s), seq 1..={held}, on "));
        let refused = r["ok"] == false && reason.starts_with("busy: ");
        assert!(served || refused, "neither served nor refused as busy: {r}");
    }
    assert!(!served_at.is_empty(), "no replay served: {results:?}");
    for (topic, got) in &replies {
        assert!(
            got == &payloads,
            "{}…: {} events, not the journal unchanged and in order",
            &topic[..40],
            got.len()
        );
    }
    assert_eq!(
        replies.len(),
        served_at.len(),
        "one reply topic per served replay"
    );
    let live_at = live_at.unwrap_or_default();
    let last_served = served_at.iter().max().copied().unwrap_or_default();
    assert!(
        live_at < last_served,
        "the live alarm (message {live_at}) came after every replay had finished (the last \
         result was message {last_served}, of {n})"
    );
    eprintln!(
        "replay storm: {requests} requests, {} served, {} refused; the live alarm was message \
         {live_at}, the last replay result message {last_served}, of {n}",
        served_at.len(),
        requests - served_at.len()
    );
}
