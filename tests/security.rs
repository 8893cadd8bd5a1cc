//! The broker as a site secures it, with deploy/mosquitto/'s example configuration: TLS, a
//! password per client, and ACLs that keep each client to its own topics. The gateway logs in
//! over TLS with its password read from `mqtt.password_file`; a drain agent cannot forge alarms;
//! a wrong password is a clear log line and a retry, never an exit.

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
