//! The broker as a site secures it, with deploy/mosquitto/'s example configuration: TLS, a
//! password per client, and ACLs that keep each client to its own topics. The gateway logs in
//! over TLS with its password read from `mqtt.password_file`; a drain agent cannot forge alarms;
//! a wrong password is a clear log line and a retry, never an exit.
//!
//! And the gateway against hostile or careless input on its command topics: an oversized body, a
//! flood, a replay aimed back at its own commands, a body with fields it does not know. Each is
//! answered on `cmd/result`, and none disconnects the gateway or starts anything.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::sync::mpsc;

const SOON: Duration = Duration::from_secs(15);

fn run(dir: &Path, program: &str, args: &[&str]) {
    let ok = Command::new(program)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| {
            panic!("{program} not installed ({e}); bash scripts/test.sh installs it")
        });
    assert!(
        ok.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&ok.stderr)
    );
}

/// A CA and a server certificate for 127.0.0.1, made with openssl.
fn certificates(d: &Path) {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509"];
    ca.extend(ec);
    ca.extend([
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=emberwatch-test-ca",
    ]);
    run(d, "openssl", &ca);
    std::fs::write(
        d.join("server.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .expect("ext");
    let mut req = vec!["req"];
    req.extend(ec);
    req.extend([
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    run(d, "openssl", &req);
    run(
        d,
        "openssl",
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "server.ext",
        ],
    );
}

/// mosquitto started as root drops to its own user: it must be able to read the files the test
/// made (private keys included; they are throwaway).
fn readable_by_the_broker(d: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).expect("chmod dir");
    for entry in std::fs::read_dir(d).expect("read dir").flatten() {
        let _ = std::fs::set_permissions(entry.path(), std::fs::Permissions::from_mode(0o644));
    }
}

/// A client logged in as `user` on the plain listener, collecting what it receives.
async fn client(
    port: u16,
    user: &str,
    filter: Option<&str>,
) -> (AsyncClient, mpsc::Receiver<(String, Vec<u8>)>) {
    let mut opts = MqttOptions::new(format!("test-{user}-{}", free_port()), "127.0.0.1", port);
    opts.set_credentials(user, format!("{user}-secret"));
    opts.set_keep_alive(Duration::from_secs(5));
    let (c, mut ev) = AsyncClient::new(opts, 32);
    if let Some(f) = filter {
        c.subscribe(f, QoS::AtLeastOnce).await.expect("subscribe");
    }
    let (tx, rx) = mpsc::channel(1024);
    let (ready_tx, mut ready_rx) = mpsc::channel(1);
    let want_suback = filter.is_some();
    tokio::spawn(async move {
        loop {
            match ev.poll().await {
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    let _ = ready_tx.send(()).await;
                }
                Ok(Event::Incoming(Packet::ConnAck(_))) if !want_suback => {
                    let _ = ready_tx.send(()).await;
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let _ = tx.send((p.topic.clone(), p.payload.to_vec())).await;
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    });
    tokio::time::timeout(SOON, ready_rx.recv())
        .await
        .expect("client connected");
    (c, rx)
}

async fn wait_for(rx: &mut mpsc::Receiver<(String, Vec<u8>)>, topic: &str, needle: &str) -> bool {
    let deadline = Instant::now() + SOON;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, rx.recv()).await {
            Ok(Some((t, p))) if t == topic && String::from_utf8_lossy(&p).contains(needle) => {
                return true
            }
            Ok(Some(_)) => {}
            _ => return false,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_logs_in_over_tls_and_acls_keep_agents_to_their_topics() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    certificates(d);
    readable_by_the_broker(d);
    let passwd = d.join("passwd");
    std::fs::write(&passwd, "").expect("passwd");
    for user in ["gw-t", "lb-1", "console"] {
        run(
            d,
            "mosquitto_passwd",
            &["-b", "passwd", user, &format!("{user}-secret")],
        );
    }
    let root = env!("CARGO_MANIFEST_DIR");
    let acl = std::fs::read_to_string(format!("{root}/deploy/mosquitto/emberwatch.acl"))
        .expect("example ACL")
        .replace("pangyo-a", "test-site")
        .replace("gw-b1", "gw-t");
    std::fs::write(d.join("acl"), acl).expect("acl");
    readable_by_the_broker(d);
    let example = std::fs::read_to_string(format!("{root}/deploy/mosquitto/emberwatch.conf"))
        .expect("example mosquitto config");
    let tls_port = free_port();
    let broker = Mosquitto::start_custom(|plain| {
        example
            .replace(
                "/etc/mosquitto/emberwatch.passwd",
                &passwd.display().to_string(),
            )
            .replace(
                "/etc/mosquitto/emberwatch.acl",
                &d.join("acl").display().to_string(),
            )
            .replace("/etc/mosquitto/certs", &d.display().to_string())
            .replace("persistence true", "persistence false")
            .replace("persistence_location /var/lib/mosquitto/", "")
            .replace("listener 8883", &format!("listener {tls_port} 127.0.0.1"))
            + &format!("\nlistener {plain} 127.0.0.1\nlog_dest stderr\n")
    })
    .await;

    let (_console, mut seen) = client(broker.port(), "console", Some("emberwatch/#")).await;
    let sim = Sim::start("normal", 1).await;
    let state = tempfile::tempdir().expect("tempdir");
    let pass_file = d.join("gw.pass");
    std::fs::write(&pass_file, "gw-t-secret\n").expect("password file");
    let config = gateway_config(broker.port(), sim.port(), state.path(), "").replace(
        &format!("url = \"mqtt://127.0.0.1:{}\"", broker.port()),
        &format!(
            "url = \"mqtts://127.0.0.1:{tls_port}\"\nca_file = '{}'\nusername = \"gw-t\"\npassword_file = '{}'",
            d.join("ca.pem").display(),
            pass_file.display()
        ),
    );
    let daemon = Daemon::start(&config);
    assert!(
        wait_for(
            &mut seen,
            &format!("{P}/gateways/gw-t/status"),
            "\"online\""
        )
        .await,
        "the gateway never came online over TLS; its log:\n{}",
        daemon.stderr()
    );
    assert!(
        !daemon.stderr().contains("gw-t-secret"),
        "the password reached the log"
    );
    sim.write(116, 572).await;
    assert!(
        wait_for(
            &mut seen,
            &format!("{P}/alarms/room-1/rack-01/cell_temp_max/cell-overtemp"),
            "\"active\""
        )
        .await,
        "no alarm through the TLS link"
    );

    // A drain agent may acknowledge, but cannot forge an alarm: the broker drops it.
    let (agent, _) = client(broker.port(), "lb-1", None).await;
    let forged = format!("{P}/alarms/room-1/rack-01/offgas/forged");
    agent
        .publish(
            &forged,
            QoS::AtLeastOnce,
            false,
            b"{\"state\":\"active\",\"marker\":\"forged\"}".to_vec(),
        )
        .await
        .expect("queue");
    let ack = format!("{P}/drain/room-1/ack/lb-1");
    agent
        .publish(
            &ack,
            QoS::AtLeastOnce,
            false,
            b"{\"marker\":\"allowed\"}".to_vec(),
        )
        .await
        .expect("queue");
    // The allowed message is published after the forged one: once it has arrived, the forged
    // one would have too.
    let mut forged_seen = false;
    let deadline = Instant::now() + SOON;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, seen.recv()).await {
            Ok(Some((t, p))) => {
                let text = String::from_utf8_lossy(&p);
                forged_seen |= t == forged && text.contains("forged");
                if t == ack && text.contains("allowed") {
                    break;
                }
            }
            _ => panic!("the agent's own acknowledgement never arrived"),
        }
    }
    assert!(
        !forged_seen,
        "an agent published an alarm: the ACL let it through"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_login_is_logged_and_retried_never_fatal() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    std::fs::write(d.join("passwd"), "").expect("passwd");
    run(d, "mosquitto_passwd", &["-b", "passwd", "gw-t", "right"]);
    readable_by_the_broker(d);
    let passwd = d.join("passwd");
    let broker = Mosquitto::start_custom(|port| {
        format!(
            "listener {port} 127.0.0.1\nallow_anonymous false\npassword_file {}\npersistence false\nlog_dest stderr\n",
            passwd.display()
        )
    })
    .await;
    let sim = Sim::start("normal", 1).await;
    let state = tempfile::tempdir().expect("tempdir");
    std::fs::write(d.join("wrong.pass"), "wrong\n").expect("password file");
    let config = gateway_config(broker.port(), sim.port(), state.path(), "").replace(
        "topic_prefix = \"emberwatch\"",
        &format!(
            "topic_prefix = \"emberwatch\"\nusername = \"gw-t\"\npassword_file = '{}'",
            d.join("wrong.pass").display()
        ),
    );
    let mut daemon = Daemon::start(&config);
    let deadline = Instant::now() + SOON;
    while !daemon.stderr().contains("broker refused the login") {
        assert!(
            Instant::now() < deadline,
            "no refused-login line:\n{}",
            daemon.stderr()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        !daemon.stderr().contains("wrong\n"),
        "the password reached the log"
    );
    // Still running (and retrying) a good while after the refusal.
    assert!(
        daemon.exited(Duration::from_secs(3)).await.is_none(),
        "the daemon exited on a refused login:\n{}",
        daemon.stderr()
    );
}

const GW: &str = "emberwatch/test-site/gateways/gw-t";
const ALARM: &str = "emberwatch/test-site/alarms/room-1/rack-01/cell_temp_max/cell-overtemp";

/// A broker, a simulated rack, a gateway with a drain for room-1 (so a drill would show on
/// `drain/room-1/request`), and a subscriber to everything, once the gateway is online.
async fn gateway() -> (Mosquitto, Sim, Daemon, tempfile::TempDir, Subscriber) {
    let broker = Mosquitto::start().await;
    let sim = Sim::start("normal", 1).await;
    let state = tempfile::tempdir().expect("tempdir");
    let mut sub = Subscriber::connect(broker.port(), "emberwatch/#").await;
    let drain = "\n[drain]\ntrigger = \"critical\"\nagents = [\"lb-1\"]\n";
    let daemon = Daemon::start(&gateway_config(
        broker.port(),
        sim.port(),
        state.path(),
        drain,
    ));
    sub.expect_where(&format!("{GW}/status"), |j| j["state"] == "online", SOON)
        .await;
    (broker, sim, daemon, state, sub)
}

/// Publishes every `(command name, body)` on `cmd/{name}` at QoS 1 from one client, as fast as
/// the broker takes them, and returns once the broker has acknowledged all of them. The client
/// may send packets up to 1 MiB (a stock client's limit is 10 KiB).
async fn send_commands(port: u16, commands: &[(&str, Vec<u8>)]) {
    let mut opts = MqttOptions::new(format!("test-console-{}", free_port()), "127.0.0.1", port);
    opts.set_max_packet_size(1 << 20, 1 << 20);
    opts.set_keep_alive(Duration::from_secs(5));
    let (client, mut ev) = AsyncClient::new(opts, 64);
    let msgs: Vec<(String, Vec<u8>)> = commands
        .iter()
        .map(|(name, body)| (format!("{GW}/cmd/{name}"), body.clone()))
        .collect();
    let n = msgs.len();
    let sender = tokio::spawn(async move {
        for (topic, body) in msgs {
            client
                .publish(topic, QoS::AtLeastOnce, false, body)
                .await
                .expect("queue publish");
        }
        client
    });
    let mut acked = 0;
    tokio::time::timeout(Duration::from_secs(60), async {
        while acked < n {
            if let Event::Incoming(Packet::PubAck(_)) = ev.poll().await.expect("console client") {
                acked += 1;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("the broker acknowledged {acked} of {n} commands"));
    let _ = sender.await.expect("sender").try_disconnect();
}

/// Issue 15 item 3: a body over the broker-facing packet limit of a stock client (and over the
/// gateway's old 256 KiB read limit) is refused by its size; the gateway stays connected, its
/// retained status never says offline, and the next command is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_command_is_refused_and_the_gateway_stays_online() {
    let (broker, _sim, _daemon, _state, mut sub) = gateway().await;
    let big = format!(r#"{{"alarm":"{}"}}"#, "x".repeat(300 * 1024));
    refused(&broker, &mut sub, "ack", big.as_bytes(), "16384-byte limit").await;

    send_commands(broker.port(), &[("ack", br#"{"alarm":"*"}"#.to_vec())]).await;
    let next = sub
        .expect_where(&format!("{GW}/cmd/result"), |j| j["command"] == "ack", SOON)
        .await;
    assert_eq!(next["ok"], true, "{next}");
    assert!(
        sub.next_matching(
            |t, j| t == format!("{GW}/status") && j["state"] != "online",
            Duration::from_millis(500)
        )
        .await
        .is_none(),
        "the gateway's status left online:\n{}",
        sub.seen_list()
    );
}

/// Issue 15 item 4: a flood far beyond the command queue gets one `cmd/result` per command
/// (applied and refused, or busy), and an alarm raised during the flood still arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_of_a_flood_is_answered() {
    const N: usize = 600;
    let (broker, sim, _daemon, _state, mut sub) = gateway().await;
    let flood: Vec<(&str, Vec<u8>)> = (0..N)
        .map(|i| {
            (
                "ack",
                format!(r#"{{"alarm":"no/such/alarm-{i}"}}"#).into_bytes(),
            )
        })
        .collect();
    let port = broker.port();
    let sending = tokio::spawn(async move { send_commands(port, &flood).await });
    sim.write(116, 572).await;
    sub.expect_where(ALARM, |j| j["state"] == "active", Duration::from_secs(5))
        .await;
    sending.await.expect("flood");

    let (mut refused, mut busy) = (0, 0);
    let deadline = Instant::now() + Duration::from_secs(30);
    while refused + busy < N {
        let left = deadline.saturating_duration_since(Instant::now());
        let Some(m) = sub
            .next_matching(|t, _| t == format!("{GW}/cmd/result"), left)
            .await
        else {
            panic!("{} of {N} commands answered ({busy} busy)", refused + busy);
        };
        let r = m.json();
        assert_eq!(r["command"], "ack", "{r}");
        assert_eq!(r["ok"], false, "{r}");
        match r["reason"].as_str().unwrap_or_default() {
            b if b.starts_with("busy: ") => busy += 1,
            _ => refused += 1,
        }
    }
    assert!(busy > 0, "the flood never filled the queue: a weak test");
    assert!(
        sub.next_matching(
            |t, _| t == format!("{GW}/cmd/result"),
            Duration::from_millis(500)
        )
        .await
        .is_none(),
        "more results than commands"
    );
}

/// Issue 15 item 5: a replay aimed at the gateway's own `cmd/drill` is refused (the events would
/// come back as drill commands), and no drill starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_onto_our_own_command_topics_is_refused_and_starts_no_drill() {
    let (broker, sim, _daemon, _state, mut sub) = gateway().await;
    sim.write(116, 572).await;
    sub.expect_where(ALARM, |j| j["state"] == "active", SOON)
        .await;
    sim.write(116, 250).await;
    sub.expect_where(ALARM, |j| j["state"] == "cleared", SOON)
        .await;
    sub.forget();
    let body = format!(r#"{{"from_seq":1,"reply_to":"{GW}/cmd/drill"}}"#);
    refused(
        &broker,
        &mut sub,
        "replay",
        body.as_bytes(),
        "own command topics",
    )
    .await;
    no_drill(&mut sub).await;
}

/// Issue 15 item 5: `cmd/drill` is strict: a field it does not take is refused by name and
/// starts nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drill_with_an_unknown_field_is_refused() {
    let (broker, _sim, _daemon, _state, mut sub) = gateway().await;
    let body = br#"{"zone":"room-1","severity":"emergency"}"#;
    refused(&broker, &mut sub, "drill", body, "unknown field `severity`").await;
    no_drill(&mut sub).await;
}

/// Sends one command and expects its refusal on `cmd/result`, the reason containing `needle`.
async fn refused(broker: &Mosquitto, sub: &mut Subscriber, name: &str, body: &[u8], needle: &str) {
    send_commands(broker.port(), &[(name, body.to_vec())]).await;
    let result = sub
        .expect_where(&format!("{GW}/cmd/result"), |j| j["command"] == name, SOON)
        .await;
    assert_eq!(result["ok"], false, "{result}");
    let reason = result["reason"].as_str().unwrap_or_default();
    assert!(reason.contains(needle), "{result}");
}

/// No drill request on room-1 for a while: no drill was started. (The retained request of the
/// real drain the test's own alarm caused may still be republished as cancelled; that is not
/// a drill, and waiting for it before the command would only make the test slower.)
async fn no_drill(sub: &mut Subscriber) {
    let request = sub
        .next_matching(
            |t, j| t == "emberwatch/test-site/drain/room-1/request" && j["drill"] == true,
            Duration::from_secs(2),
        )
        .await;
    assert!(
        request.is_none(),
        "a drain request was published: {:?}",
        request.map(|m| m.text())
    );
}
