//! A Modbus TCP device that misbehaves, as the operator watching MQTT and the log sees it: a
//! real socket server in the test plays the device (answering every read, then doing what a
//! broken or hostile device does), the real daemon polls it and publishes to a real mosquitto.
//!
//! Issue 15: a valid reply followed by 1 MB of garbage alternated good/fault telemetry without
//! an alarm or a warning, and a reply with more registers than asked was accepted silently.

mod common;

use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const PROTOCOL: &str = "emberwatch/test-site/alarms/room-1/rack-01/_link/protocol";
const TELEMETRY: &str = "emberwatch/test-site/telemetry/rack-01";
const SOON: Duration = Duration::from_secs(10);

/// What the fake device does after reading a request.
#[derive(Clone, Copy)]
enum Misbehaviour {
    /// A correct reply, then 1 MB of garbage on the same connection.
    GarbageAfterReply,
    /// A reply carrying two more registers than asked.
    ExtraRegisters,
    /// A reply to another transaction than the one asked.
    WrongTransaction,
}

/// Serves every connection on a free port until the test ends; returns its address.
async fn device(how: Misbehaviour) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut req = [0u8; 12];
                while conn.read_exact(&mut req).await.is_ok() {
                    let count = u16::from_be_bytes([req[10], req[11]]);
                    let asked = usize::from(count);
                    let words = match how {
                        Misbehaviour::ExtraRegisters => asked + 2,
                        _ => asked,
                    };
                    if let Misbehaviour::WrongTransaction = how {
                        req[1] = req[1].wrapping_add(1);
                    }
                    // 25.0 degC everywhere (i16, scale 0.1).
                    let mut pdu = vec![req[7], (words * 2) as u8];
                    for _ in 0..words {
                        pdu.extend_from_slice(&250u16.to_be_bytes());
                    }
                    let mut reply = vec![req[0], req[1], 0, 0];
                    reply.extend_from_slice(&((pdu.len() + 1) as u16).to_be_bytes());
                    reply.push(req[6]);
                    reply.extend_from_slice(&pdu);
                    if conn.write_all(&reply).await.is_err() {
                        return;
                    }
                    if let Misbehaviour::GarbageAfterReply = how {
                        let junk = vec![0xA5u8; 1 << 20];
                        if conn.write_all(&junk).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    addr
}

struct Rig {
    sub: Subscriber,
    daemon: Daemon,
    _state: tempfile::TempDir,
    _broker: Mosquitto,
}

async fn rig(how: Misbehaviour) -> Rig {
    let broker = Mosquitto::start().await;
    let addr = device(how).await;
    let port: u16 = addr.rsplit(':').next().unwrap().parse().unwrap();
    let state = tempfile::tempdir().expect("tempdir");
    let sub = Subscriber::connect(broker.port(), "emberwatch/#").await;
    let daemon = Daemon::start(&gateway_config(broker.port(), port, state.path(), ""));
    Rig {
        sub,
        daemon,
        _state: state,
        _broker: broker,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_that_floods_garbage_after_its_replies_is_a_raised_protocol_fault() {
    let mut rig = rig(Misbehaviour::GarbageAfterReply).await;
    let ev = rig.sub.expect(PROTOCOL, SOON).await;
    assert_eq!(ev["kind"], "fault");
    assert_eq!(ev["state"], "active");
    assert_eq!(ev["severity"], "warning");
    let msg = ev["message"].as_str().unwrap_or_default().to_string();
    assert!(
        msg.starts_with("malformed replies: device rack-01 at 127.0.0.1:")
            && msg.contains("holding registers 116-122: "),
        "{msg}"
    );
    assert!(
        !msg.contains('{'),
        "no Rust debug text for operators: {msg}"
    );
    // While the device keeps at it, the telemetry stays `fault`: no good/fault flapping, and the
    // fault is raised once.
    rig.sub.forget();
    let mut qualities = Vec::new();
    let until = tokio::time::Instant::now() + Duration::from_secs(3);
    while let Some(m) = rig
        .sub
        .next_matching(
            |t, _| t == TELEMETRY || t == PROTOCOL,
            until.saturating_duration_since(tokio::time::Instant::now()),
        )
        .await
    {
        assert_ne!(m.topic, PROTOCOL, "raised again: {}", m.text());
        qualities.push(m.json()["quality"].as_str().unwrap_or("?").to_string());
    }
    assert!(qualities.len() >= 10, "{qualities:?}");
    assert!(qualities.iter().all(|q| q == "fault"), "{qualities:?}");
    // The log warns once, naming the device and its address.
    let log = rig.daemon.stderr();
    let warnings: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("protocol fault"))
        .collect();
    assert_eq!(warnings.len(), 1, "{log}");
    assert!(
        warnings[0].contains("device rack-01 at 127.0.0.1:"),
        "{}",
        warnings[0]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_with_more_registers_than_asked_is_refused_as_a_protocol_fault() {
    let mut rig = rig(Misbehaviour::ExtraRegisters).await;
    let ev = rig.sub.expect(PROTOCOL, SOON).await;
    let msg = ev["message"].as_str().unwrap_or_default();
    assert!(
        msg.starts_with("malformed replies: device rack-01 at 127.0.0.1:")
            && msg.ends_with(": holding registers 116-122: asked 7 registers, got 9"),
        "{msg}"
    );
    let t = rig.sub.expect(TELEMETRY, SOON).await;
    assert_eq!(t["quality"], "fault");
    assert_eq!(t["points"], serde_json::json!({}));
}

/// Issue 15: link-fault messages showed Rust debug text (`Header { transaction_id: .. }`) to
/// operators. `emberwatch read` against a device answering another transaction says so in plain
/// words.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_names_a_reply_to_the_wrong_request_in_plain_words() {
    let addr = device(Misbehaviour::WrongTransaction).await;
    let port: u16 = addr.rsplit(':').next().unwrap().parse().unwrap();
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("c.toml");
    std::fs::write(&config, gateway_config(1883, port, dir.path(), "")).unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_emberwatch"))
        .args(["read", "--config"])
        .arg(&config)
        .env("NO_COLOR", "1")
        .output()
        .await
        .expect("run emberwatch read");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    let line = stdout
        .lines()
        .find(|l| l.starts_with("rack-01"))
        .unwrap_or_default();
    assert_eq!(
        line.split_whitespace().collect::<Vec<_>>().join(" "),
        format!(
            "rack-01 - device rack-01 at {addr}: holding registers 116-122: \
             reply to transaction 1 while transaction 0 was asked"
        ),
        "{stdout}"
    );
}
