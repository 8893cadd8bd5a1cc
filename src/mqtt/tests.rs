//! The link's promises, told as what an operator watching the broker sees: against a real
//! mosquitto (started per test on a free port) and against the embedded broker.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rumqttc::{AsyncClient, Event, Incoming, LastWill, MqttOptions, QoS};
use serde_json::Value;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

use super::harness::{config, eventually, free_port, Mosquitto, Watcher, WAIT};
use super::payload::tests::{spec_event, SPEC_EVENT_JSON};
use super::{connect, embedded, Link, Topics};
use crate::alarms::{AlarmEvent, Level, ZoneStatus};
use crate::command::{Ack, Command};
use crate::config::BrokerUrl;
use crate::message::{Outgoing, Quality, Telemetry};

const STATUS: &str = "emberwatch/pangyo-a/gateways/gw-b1/status";
const ALARMS: &str = "emberwatch/pangyo-a/alarms/#";
const ALARM_TOPIC: &str = "emberwatch/pangyo-a/alarms/room-1/rack-01/cell_temp_max/cell-overtemp";
const OFFLINE: &[u8] = br#"{"state":"offline"}"#;

fn event(seq: u64) -> AlarmEvent {
    AlarmEvent {
        seq,
        event_id: format!("gw-b1-{seq}"),
        ..spec_event()
    }
}

fn seq_of(payload: &[u8]) -> u64 {
    let v: Value = serde_json::from_slice(payload).expect("event JSON");
    v["seq"].as_u64().expect("seq")
}

async fn linked(url: &str) -> (Link, CancellationToken) {
    let cancel = CancellationToken::new();
    let link = connect(&config(url), cancel.clone())
        .await
        .expect("link starts");
    eventually("the link to connect", || link.publisher.is_connected()).await;
    (link, cancel)
}

async fn stop(link: Link, cancel: CancellationToken) {
    cancel.cancel();
    timeout(WAIT, link.closed())
        .await
        .expect("link closes in time after cancel");
}

fn assert_online(payload: &[u8]) {
    let v: Value = serde_json::from_slice(payload).expect("status JSON");
    assert_eq!(v["state"], "online", "{v}");
    assert_eq!(v["version"], crate::VERSION, "{v}");
    let started = v["started_at"].as_str().expect("started_at");
    humantime::parse_rfc3339(started).expect("started_at is RFC 3339");
    assert_eq!(v.as_object().map(|o| o.len()), Some(3), "{v}");
}

#[tokio::test]
async fn online_status_is_retained_with_version() {
    let broker = Mosquitto::start().await;
    let (link, cancel) = linked(&broker.url()).await;
    // A dashboard that connects later still learns the gateway is up.
    let mut later = Watcher::new(broker.port, STATUS).await;
    let p = later.next_on(STATUS).await;
    assert!(p.retain, "status must be retained");
    assert_eq!(p.qos, QoS::AtLeastOnce);
    assert_online(&p.payload);
    stop(link, cancel).await;
}

#[tokio::test]
async fn critical_alarm_reaches_subscriber_as_spec_json() {
    let broker = Mosquitto::start().await;
    let mut watcher = Watcher::new(broker.port, ALARMS).await;
    let (link, cancel) = linked(&broker.url()).await;
    link.publisher.send(Outgoing::Event(spec_event())).await;
    let p = watcher.next().await;
    assert_eq!(p.topic, ALARM_TOPIC);
    assert_eq!(std::str::from_utf8(&p.payload).unwrap(), SPEC_EVENT_JSON);
    assert_eq!(p.qos, QoS::AtLeastOnce);
    assert!(!p.retain, "events are not retained");
    stop(link, cancel).await;
}

#[tokio::test]
async fn zone_status_is_retained_for_late_subscribers() {
    let broker = Mosquitto::start().await;
    let (link, cancel) = linked(&broker.url()).await;
    let zone = ZoneStatus {
        zone: "room-1".into(),
        level: Level::Critical,
        active: vec!["rack-01/cell_temp_max/cell-overtemp".into()],
        faults: 1,
        time: "2026-11-24T13:40:02.123Z".into(),
        shelved: vec![],
        unacknowledged: 0,
        evidence: Level::Critical,
    };
    link.publisher.send(Outgoing::Zone(zone.clone())).await;
    // Once the broker has it (the stop waits for the ack), a late subscriber sees it.
    stop(link, cancel).await;
    let topic = "emberwatch/pangyo-a/zones/room-1/status";
    let mut later = Watcher::new(broker.port, topic).await;
    let p = later.next_on(topic).await;
    assert!(p.retain);
    assert_eq!(p.payload, serde_json::to_vec(&zone).unwrap());
}

#[tokio::test]
async fn last_will_marks_gateway_offline_when_it_dies() {
    let broker = Mosquitto::start().await;
    let mut watcher = Watcher::new(broker.port, STATUS).await;
    let (link, _cancel) = linked(&broker.url()).await;
    assert_online(&watcher.next_on(STATUS).await.payload);
    // No DISCONNECT: the socket just closes, as when the process is killed.
    link.crash().await;
    watcher.expect(STATUS, OFFLINE).await;
    // And it stays that way for anyone who looks later.
    let mut later = Watcher::new(broker.port, STATUS).await;
    let p = later.next_on(STATUS).await;
    assert!(p.retain);
    assert_eq!(p.payload, OFFLINE);
}

#[tokio::test]
async fn events_raised_while_the_broker_is_down_arrive_in_order_after_it_returns() {
    let mut broker = Mosquitto::start().await;
    let mut watcher = Watcher::persistent(broker.port, "dashboard-1", ALARMS).await;
    let (link, cancel) = linked(&broker.url()).await;
    link.publisher.send(Outgoing::Event(event(1))).await;
    assert_eq!(seq_of(&watcher.next().await.payload), 1);

    broker.stop().await;
    eventually("the link to notice", || !link.publisher.is_connected()).await;
    for seq in 2..=20 {
        // Must not block: the queue is far from full.
        timeout(
            Duration::from_secs(1),
            link.publisher.send(Outgoing::Event(event(seq))),
        )
        .await
        .expect("send does not block while disconnected");
    }
    broker.restart().await;

    let mut seen = Vec::new();
    while seen.len() < 19 {
        let seq = seq_of(&watcher.next().await.payload);
        if !seen.contains(&seq) {
            seen.push(seq);
        }
    }
    assert_eq!(seen, (2..=20).collect::<Vec<_>>());
    stop(link, cancel).await;
}

#[tokio::test]
async fn a_burst_cut_by_a_broker_restart_loses_nothing() {
    let mut broker = Mosquitto::start().await;
    let mut watcher = Watcher::persistent(broker.port, "dashboard-2", ALARMS).await;
    let (link, cancel) = linked(&broker.url()).await;
    const N: u64 = 400;
    let publisher = link.publisher.clone();
    let sender = tokio::spawn(async move {
        for seq in 1..=N {
            publisher.send(Outgoing::Event(event(seq))).await;
        }
    });
    // Stop the broker while the burst is on the wire.
    let mut first = Vec::new();
    while first.len() < 20 {
        first.push(seq_of(&watcher.next().await.payload));
    }
    broker.stop().await;
    sender.await.expect("sender task");
    broker.restart().await;

    let mut seen: Vec<u64> = Vec::new();
    for seq in first {
        if !seen.contains(&seq) {
            seen.push(seq);
        }
    }
    while (seen.len() as u64) < N {
        let seq = seq_of(&watcher.next().await.payload);
        if !seen.contains(&seq) {
            seen.push(seq);
        }
    }
    // At least once, and first copies in the order raised.
    assert_eq!(seen, (1..=N).collect::<Vec<_>>());
    stop(link, cancel).await;
}

#[tokio::test]
async fn commands_reach_the_daemon_and_answers_are_not_taken_for_commands() {
    let broker = Mosquitto::start().await;
    let topics = Topics::from_parts("emberwatch", "pangyo-a", "gw-b1");
    let operator = Watcher::new(broker.port, "nothing/at/all").await;
    // A retained command left on the broker must not be replayed at connect.
    operator
        .client
        .publish(topics.cmd("shelve"), QoS::AtLeastOnce, true, "{}")
        .await
        .unwrap();
    let mut gw = Watcher::new(broker.port, &topics.cmd("shelve")).await;
    gw.next().await; // the broker has the retained command

    let (mut link, cancel) = linked(&broker.url()).await;
    let mut results = Watcher::new(broker.port, &topics.cmd_result()).await;
    link.publisher
        .send(Outgoing::CommandResult(crate::message::CommandResult {
            command: "ack".into(),
            ok: true,
            reason: None,
        }))
        .await;
    results.next().await; // our own answer went round the broker
    operator
        .client
        .publish(
            "emberwatch/pangyo-a/gateways/gw-b1/cmd/ack",
            QoS::AtLeastOnce,
            false,
            r#"{"alarm":"*"}"#,
        )
        .await
        .unwrap();
    let cmd = timeout(WAIT, link.commands.recv())
        .await
        .expect("command in time")
        .expect("command channel open");
    assert_eq!(
        cmd,
        Ok(Command::Ack(Ack {
            alarm: "*".into(),
            zone: None,
            by: None,
        }))
    );
    assert!(link.commands.try_recv().is_err(), "nothing else: {cmd:?}");
    stop(link, cancel).await;
}

#[tokio::test]
async fn a_clean_stop_sends_queued_events_then_offline() {
    let broker = Mosquitto::start().await;
    let mut watcher = Watcher::new(broker.port, "emberwatch/pangyo-a/#").await;
    let (link, cancel) = linked(&broker.url()).await;
    assert_online(&watcher.next_on(STATUS).await.payload);
    for seq in 1..=5 {
        link.publisher.send(Outgoing::Event(event(seq))).await;
    }
    stop(link, cancel).await;
    let mut got = Vec::new();
    loop {
        let p = watcher.next().await;
        if p.topic == STATUS {
            assert_eq!(p.payload, OFFLINE);
            break;
        }
        got.push(seq_of(&p.payload));
    }
    assert_eq!(got, [1, 2, 3, 4, 5], "events before the offline status");
    let mut later = Watcher::new(broker.port, STATUS).await;
    assert_eq!(later.next_on(STATUS).await.payload, OFFLINE);
}

#[tokio::test]
async fn a_link_without_its_broker_is_disconnected_but_not_stalled() {
    // The watchdog must tell a hung loop from an unreachable broker: the second is a fault
    // for the operator, not a reason for systemd to restart the daemon.
    let url = format!("mqtt://127.0.0.1:{}", free_port());
    let cancel = CancellationToken::new();
    let link = connect(&config(&url), cancel.clone())
        .await
        .expect("link starts");
    let within = super::link::PULSE * 2;
    // Long enough that a loop that never beat would be listed.
    tokio::time::sleep(within + super::link::PULSE * 2).await;
    assert_eq!(link.publisher.stalled_links(within), Vec::<String>::new());
    assert_eq!(link.publisher.brokers(), vec![(url.clone(), false)]);
    stop(link, cancel).await;
}

#[tokio::test]
async fn telemetry_is_dropped_and_counted_while_disconnected() {
    // Nothing listens here: the link keeps retrying in the background.
    let url = format!("mqtt://127.0.0.1:{}", free_port());
    let cancel = CancellationToken::new();
    let link = connect(&config(&url), cancel.clone())
        .await
        .expect("link starts");
    assert!(!link.publisher.is_connected());
    let body = Telemetry::new(
        "2026-11-24T13:40:02.123Z".into(),
        Vec::new().into(),
        Vec::new(),
        Quality::Good,
    );
    for _ in 0..3 {
        link.publisher
            .send(Outgoing::Telemetry {
                device: "rack-01".into(),
                body: body.clone(),
            })
            .await;
    }
    assert_eq!(link.publisher.telemetry_dropped(), 3);
    // Events are queued, not dropped, and do not block.
    timeout(
        Duration::from_secs(1),
        link.publisher.send(Outgoing::Event(event(1))),
    )
    .await
    .expect("queued without blocking");
    // With no broker the stop gives up after its grace period.
    let started = tokio::time::Instant::now();
    stop(link, cancel).await;
    assert!(started.elapsed() < super::link::STOP_GRACE + Duration::from_secs(2));
}

/// The loop writes rumqttc's packets itself (`link/outbound.rs`), so it also pings: a link
/// with nothing to say for several keep-alives stays connected. The embedded broker (rumqttd)
/// drops a client silent for 1.5 keep-alives and publishes its last will; mosquitto 2.0.11
/// let an idle client live without pings, so it could not tell.
#[tokio::test]
async fn an_idle_link_stays_connected_by_its_pings() {
    let broker = embedded::start_on_free_port()
        .await
        .expect("embedded broker");
    let port = broker.addr.port();
    let mut cfg = config(&format!("mqtt://127.0.0.1:{port}"));
    cfg.mqtt.keep_alive = Duration::from_secs(1);
    let cancel = CancellationToken::new();
    let link = connect(&cfg, cancel.clone()).await.expect("link starts");
    let mut watcher = Watcher::new(port, STATUS).await;
    assert_online(&watcher.next_on(STATUS).await.payload);
    // No last will (offline), no second online after a reconnect.
    if let Some(p) = watcher.silent_for(Duration::from_secs(4)).await {
        panic!(
            "the idle link was dropped: {}",
            String::from_utf8_lossy(&p.payload)
        );
    }
    assert!(link.publisher.is_connected());
    stop(link, cancel).await;
}

/// Telemetry ready together goes out in one write; none of it is lost or reordered, and an
/// alarm handed over in the middle of a burst arrives with it.
#[tokio::test]
async fn a_burst_of_telemetry_arrives_whole_and_in_order_with_the_alarm_in_it() {
    let broker = Mosquitto::start().await;
    let mut watcher = Watcher::new(broker.port, "emberwatch/pangyo-a/#").await;
    let (link, cancel) = linked(&broker.url()).await;
    let telemetry = |n: usize| Outgoing::Telemetry {
        device: "rack-01".into(),
        body: Telemetry::new(
            format!("2026-11-24T13:40:{n:02}.000Z"),
            Vec::new().into(),
            Vec::new(),
            Quality::Good,
        ),
    };
    let mut burst: Vec<Outgoing> = (0..40).map(telemetry).collect();
    burst.push(Outgoing::Event(event(1)));
    burst.extend((40..60).map(telemetry));
    link.publisher.send_all(burst).await.expect("sent");
    let mut times = Vec::new();
    let mut alarm = false;
    while times.len() < 60 || !alarm {
        let p = watcher.next().await;
        if p.topic == ALARM_TOPIC {
            assert_eq!(seq_of(&p.payload), 1);
            alarm = true;
        } else if p.topic.contains("/telemetry/") {
            let v: Value = serde_json::from_slice(&p.payload).expect("telemetry JSON");
            times.push(v["time"].as_str().expect("time").to_string());
        }
    }
    let want: Vec<String> = (0..60)
        .map(|n| format!("2026-11-24T13:40:{n:02}.000Z"))
        .collect();
    assert_eq!(times, want);
    assert_eq!(link.publisher.telemetry_dropped(), 0);
    stop(link, cancel).await;
}

/// A `tracing` writer into a shared buffer, to read what the link logged.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

#[tokio::test]
async fn a_refused_login_is_logged_as_such_and_a_good_one_connects() {
    let dir = tempfile::tempdir().unwrap();
    let passwords = dir.path().join("passwords");
    let status = std::process::Command::new("mosquitto_passwd")
        .arg("-b")
        .arg("-c")
        .arg(&passwords)
        .args(["gateway", "s3cret-pw"])
        .status()
        .expect("mosquitto_passwd runs");
    assert!(status.success());
    let broker = Mosquitto::start_with(&format!(
        "allow_anonymous false\npassword_file {}",
        passwords.display()
    ))
    .await;

    // The link task runs on this test's thread (current-thread runtime), so a thread-local
    // subscriber sees its logs.
    let logs = Logs::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let wrong = dir.path().join("wrong.pass");
    std::fs::write(&wrong, "not-it-at-all\n").unwrap();
    let mut cfg = config(&broker.url());
    cfg.mqtt.username = Some("gateway".into());
    cfg.mqtt.password_file = Some(wrong);
    let cancel = CancellationToken::new();
    let link = connect(&cfg, cancel.clone()).await.expect("link starts");
    let prefix = format!("mqtt broker {}: broker refused the login", broker.url());
    eventually("the refusal to be logged", || logs.text().contains(&prefix)).await;
    assert!(!link.publisher.is_connected());
    stop(link, cancel).await;

    let right = dir.path().join("right.pass");
    std::fs::write(&right, "s3cret-pw\n").unwrap();
    cfg.mqtt.password_file = Some(right);
    let cancel = CancellationToken::new();
    let link = connect(&cfg, cancel.clone()).await.expect("link starts");
    eventually("the link to connect", || link.publisher.is_connected()).await;
    stop(link, cancel).await;

    let text = logs.text();
    assert!(
        !text.contains("s3cret-pw") && !text.contains("not-it-at-all"),
        "{text}"
    );
}

/// Runs openssl; returns false (and the test skips) where it is not installed.
fn openssl(dir: &std::path::Path, args: &[&str]) -> bool {
    match std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
    {
        Ok(s) => {
            assert!(s.success(), "openssl {args:?}");
            true
        }
        Err(_) => false,
    }
}

#[tokio::test]
async fn tls_with_ca_file_and_client_certificate() {
    let certs = tempfile::tempdir().unwrap();
    let d = certs.path();
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let ca = [
        &["req", "-x509"][..],
        &ec,
        &[
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=emberwatch-test-ca",
        ],
    ]
    .concat();
    if !openssl(d, &ca) {
        eprintln!("openssl not installed; skipping the TLS test");
        return;
    }
    for (name, usage, subject) in [
        ("server", "serverAuth", "/CN=127.0.0.1"),
        ("client", "clientAuth", "/CN=gw-b1"),
    ] {
        let key = format!("{name}.key");
        let csr = format!("{name}.csr");
        let pem = format!("{name}.pem");
        let ext = format!("{name}.ext");
        std::fs::write(
            d.join(&ext),
            format!("subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage={usage}\n"),
        )
        .unwrap();
        let req = [
            &["req"][..],
            &ec,
            &["-keyout", &key, "-out", &csr, "-subj", subject],
        ]
        .concat();
        assert!(openssl(d, &req));
        assert!(openssl(
            d,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &pem,
                "-days",
                "2",
                "-extfile",
                &ext
            ]
        ));
    }
    let plain = free_port();
    let broker = Mosquitto::start_with(&format!(
        "cafile {d}/ca.pem\ncertfile {d}/server.pem\nkeyfile {d}/server.key\nrequire_certificate true\n\
         listener {plain} 127.0.0.1",
        d = d.display()
    ))
    .await;
    let mut watcher = Watcher::new(plain, ALARMS).await;

    let mut cfg = config(&broker.url());
    cfg.mqtt.url = BrokerUrl::Tls {
        host: "127.0.0.1".into(),
        port: broker.port,
    };
    cfg.mqtt.ca_file = Some(d.join("ca.pem"));
    cfg.mqtt.cert_file = Some(d.join("client.pem"));
    cfg.mqtt.key_file = Some(d.join("client.key"));
    let cancel = CancellationToken::new();
    let link = connect(&cfg, cancel.clone())
        .await
        .expect("TLS options build");
    eventually("the TLS link to connect", || link.publisher.is_connected()).await;
    link.publisher.send(Outgoing::Event(spec_event())).await;
    let p = watcher.next().await;
    assert_eq!(std::str::from_utf8(&p.payload).unwrap(), SPEC_EVENT_JSON);
    stop(link, cancel).await;

    // A CA file that is not one fails at connect, naming the file.
    cfg.mqtt.ca_file = Some(d.join("ca.key"));
    let e = connect(&cfg, CancellationToken::new())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("mqtt.ca_file ") && e.contains("ca.key"),
        "{e}"
    );
}

#[tokio::test]
async fn embedded_broker_keeps_retained_messages_and_fires_last_wills() {
    let broker = embedded::start_on_free_port()
        .await
        .expect("embedded broker");
    let port = broker.addr.port();

    let mut o = MqttOptions::new("dying-client", "127.0.0.1", port);
    o.set_last_will(LastWill::new("t/will", "gone", QoS::AtLeastOnce, false));
    let (client, mut eventloop) = AsyncClient::new(o, 10);
    client
        .publish("t/retained", QoS::AtLeastOnce, true, "kept")
        .await
        .unwrap();
    timeout(WAIT, async {
        loop {
            if let Event::Incoming(Incoming::PubAck(_)) = eventloop.poll().await.expect("poll") {
                break;
            }
        }
    })
    .await
    .expect("retained publish acked");

    let mut watcher = Watcher::new(port, "t/#").await;
    let p = watcher.next_on("t/retained").await;
    assert!(p.retain);
    assert_eq!(p.payload, "kept");

    drop(eventloop); // the socket closes without DISCONNECT
    let p = watcher.next_on("t/will").await;
    assert_eq!(p.payload, "gone");
}

#[tokio::test]
async fn the_gateway_link_works_against_the_embedded_broker() {
    let broker = embedded::start_on_free_port()
        .await
        .expect("embedded broker");
    let url = format!("mqtt://{}", broker.addr);
    let mut watcher = Watcher::new(broker.addr.port(), "emberwatch/pangyo-a/#").await;
    let (link, _cancel) = linked(&url).await;
    assert_online(&watcher.next_on(STATUS).await.payload);
    link.publisher.send(Outgoing::Event(spec_event())).await;
    let p = watcher.next_on(ALARM_TOPIC).await;
    assert_eq!(std::str::from_utf8(&p.payload).unwrap(), SPEC_EVENT_JSON);
    link.crash().await;
    watcher.expect(STATUS, OFFLINE).await;
    // Nothing else (no duplicate status) is pending.
    assert!(watcher
        .silent_for(Duration::from_millis(200))
        .await
        .is_none());
}

/// A drain agent's link: its own presence (retained, last will offline), no commands, extra
/// subscriptions delivered on `incoming`, and a broker session that keeps QoS 1 messages
/// published while it was away.
#[tokio::test]
async fn an_agent_link_hears_its_filters_and_keeps_its_session() {
    let broker = Mosquitto::start().await;
    let cfg = config(&broker.url());
    let opts = super::LinkOptions {
        client_id: "emberwatch-agent-test".into(),
        presence: super::Presence {
            topic: "emberwatch/pangyo-a/drain/agents/lb-1".into(),
            online: br#"{"state":"online","zones":["room-1"]}"#.to_vec(),
            offline: br#"{"state":"offline","zones":["room-1"]}"#.to_vec(),
        },
        commands: false,
        subscriptions: vec!["emberwatch/pangyo-a/drain/+/request".into()],
        persistent_session: true,
        host_embedded: false,
    };
    let start = |opts: super::LinkOptions| {
        let cfg = cfg.clone();
        async move {
            let cancel = CancellationToken::new();
            let link = super::connect_with(&cfg, opts, cancel.clone())
                .await
                .expect("link starts");
            eventually("the agent link to connect", || {
                link.publisher.is_connected()
            })
            .await;
            (link, cancel)
        }
    };
    let mut presence = Watcher::new(broker.port, "emberwatch/pangyo-a/drain/agents/+").await;
    let (mut link, cancel) = start(opts.clone()).await;
    let p = presence.next().await;
    assert_eq!(&p.payload[..], br#"{"state":"online","zones":["room-1"]}"#);
    // The subscription is in place once the online presence went out (SUBSCRIBE follows it on
    // the wire); wait for the broker to have it by publishing until it arrives.
    let operator = Watcher::new(broker.port, "nothing/at/all").await;
    let got = timeout(WAIT, async {
        loop {
            operator
                .client
                .publish(
                    "emberwatch/pangyo-a/drain/room-1/request",
                    QoS::AtLeastOnce,
                    false,
                    "first",
                )
                .await
                .unwrap();
            if let Ok(Some(m)) = timeout(Duration::from_millis(200), link.incoming.recv()).await {
                return m;
            }
        }
    })
    .await
    .expect("a request on the extra filter arrives");
    assert_eq!(got.topic, "emberwatch/pangyo-a/drain/room-1/request");
    assert_eq!(got.payload, b"first");
    assert!(link.commands.try_recv().is_err());
    stop(link, cancel).await;
    assert_eq!(
        &presence.next().await.payload[..],
        br#"{"state":"offline","zones":["room-1"]}"#
    );
    // Published while the agent is away (a watcher confirms the broker has it): the broker
    // keeps it in the agent's session.
    let mut seen = Watcher::new(broker.port, "emberwatch/pangyo-a/drain/room-2/request").await;
    operator
        .client
        .publish(
            "emberwatch/pangyo-a/drain/room-2/request",
            QoS::AtLeastOnce,
            false,
            "while away",
        )
        .await
        .unwrap();
    assert_eq!(&seen.next().await.payload[..], b"while away");
    let (mut link, cancel) = start(opts).await;
    let m = loop {
        let m = timeout(WAIT, link.incoming.recv())
            .await
            .expect("queued message after reconnect")
            .expect("incoming open");
        if m.payload != b"first" {
            break m;
        }
    };
    assert_eq!(m.topic, "emberwatch/pangyo-a/drain/room-2/request");
    assert_eq!(m.payload, b"while away");
    stop(link, cancel).await;
}
