//! Table tests of what is sent to Alertmanager when, and of the URL and HTTP edges.

use super::*;

fn view(state: &str, severity: &str) -> AlarmView {
    serde_json::from_value(serde_json::json!({
        "event_id": "gw-t-7", "seq": 7, "site": "s1", "gateway": "gw-t",
        "alarm": "rack-01/offgas/offgas", "rule": "offgas", "zone": "room-1",
        "device": "rack-01", "point": "offgas", "kind": "threshold", "severity": severity,
        "state": state, "acked": false, "value": 150.0, "threshold": 100.0, "unit": "ppm",
        "message": "offgas 150 ppm above critical 100", "time": "2026-11-29T12:00:01.000Z",
        "since": "2026-11-29T12:00:00.000Z",
        "isa_state": if state == "active" { "active_unacknowledged" } else { "cleared_unacknowledged" },
    }))
    .expect("a gateway event parses")
}

fn t(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000 + secs)
}

#[test]
fn active_alarm_is_sent_with_the_labels_of_the_plan() {
    let mut a = Alerts::default();
    assert!(a.observe(view("active", "critical")));
    let due = a.due(t(0));
    assert_eq!(due.len(), 1);
    let labels: Vec<(&str, &str)> = due[0]
        .labels
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(
        labels,
        [
            ("alarm", "rack-01/offgas/offgas"),
            ("alertname", "offgas"),
            ("device", "rack-01"),
            ("gateway", "gw-t"),
            ("point", "offgas"),
            ("severity", "critical"),
            ("site", "s1"),
            ("zone", "room-1"),
        ]
    );
    assert_eq!(
        due[0].annotations["message"],
        "offgas 150 ppm above critical 100"
    );
    assert_eq!(
        due[0].starts_at.as_deref(),
        Some("2026-11-29T12:00:00.000Z")
    );
    assert_eq!(due[0].ends_at, clock::rfc3339(t(0) + ENDS_AFTER));
    let json = serde_json::to_value(&due[0]).expect("json");
    assert!(json.get("endsAt").is_some() && json.get("startsAt").is_some());
}

#[test]
fn active_alarms_are_resent_every_resend_interval_only() {
    let mut a = Alerts::default();
    a.observe(view("active", "critical"));
    assert_eq!(a.due(t(0)).len(), 1);
    a.sent();
    assert!(
        a.due(t(5)).is_empty(),
        "nothing new, not yet time to re-send"
    );
    assert!(
        !a.observe(view("active", "critical")),
        "the same state again"
    );
    assert_eq!(a.due(t(RESEND.as_secs())).len(), 1, "re-sent after RESEND");
}

#[test]
fn clearing_resolves_with_ends_at_now() {
    let mut a = Alerts::default();
    a.observe(view("active", "critical"));
    a.due(t(0));
    a.sent();
    assert!(a.observe(view("cleared", "critical")));
    let due = a.due(t(10));
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].ends_at, clock::rfc3339(t(10)));
    assert_eq!(due[0].labels["severity"], "critical");
    a.sent();
    assert!(
        a.due(t(200)).is_empty(),
        "a delivered resolution is not repeated"
    );
    assert_eq!(a.active_count(), 0);
}

#[test]
fn a_cleared_alarm_never_paged_sends_nothing() {
    let mut a = Alerts::default();
    assert!(!a.observe(view("cleared", "warning")));
    assert!(a.due(t(0)).is_empty());
}

#[test]
fn severity_change_ends_the_old_alert_and_starts_the_new() {
    let mut a = Alerts::default();
    a.observe(view("active", "warning"));
    a.due(t(0));
    a.sent();
    assert!(a.observe(view("active", "critical")));
    let due = a.due(t(3));
    assert_eq!(due.len(), 2);
    assert_eq!(due[0].labels["severity"], "warning");
    assert_eq!(due[0].ends_at, clock::rfc3339(t(3)));
    assert_eq!(due[1].labels["severity"], "critical");
    assert_eq!(due[1].ends_at, clock::rfc3339(t(3) + ENDS_AFTER));
}

#[test]
fn shelving_resolves_and_ack_updates_the_annotation() {
    let mut a = Alerts::default();
    a.observe(view("active", "critical"));
    a.due(t(0));
    a.sent();
    let mut acked = view("active", "critical");
    acked.isa_state = Some("active_acknowledged".into());
    acked.acked_by = Some("mina".into());
    assert!(
        a.observe(acked),
        "the acknowledgement is news for the pager"
    );
    let due = a.due(t(1));
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].annotations["acked_by"], "mina");
    assert_eq!(
        due[0].ends_at,
        clock::rfc3339(t(1) + ENDS_AFTER),
        "acked is still active"
    );
    a.sent();
    let mut shelved = view("active", "critical");
    shelved.isa_state = Some("shelved".into());
    assert!(a.observe(shelved));
    let due = a.due(t(2));
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].ends_at, clock::rfc3339(t(2)), "shelved: resolved");
}

#[test]
fn after_a_failure_everything_is_sent_again() {
    let mut a = Alerts::default();
    a.observe(view("active", "critical"));
    a.due(t(0));
    a.sent();
    a.observe(view("cleared", "critical"));
    assert_eq!(a.due(t(1)).len(), 1);
    a.failed();
    let again = a.due(t(6));
    assert_eq!(again.len(), 1, "the resolution is retried");
    assert_eq!(again[0].ends_at, clock::rfc3339(t(6)));
}

#[test]
fn urls() {
    let ok = |u: &str| Target::parse(u).expect(u);
    assert_eq!(
        ok("http://127.0.0.1:9093"),
        Target {
            host: "127.0.0.1".into(),
            port: 9093,
            prefix: String::new()
        }
    );
    assert_eq!(ok("http://am.local/alertmanager/").prefix, "/alertmanager");
    assert_eq!(ok("http://am.local/alertmanager/").port, 80);
    for (bad, why) in [
        ("https://am:9093", "only http://"),
        ("am:9093", "only http://"),
        ("http://", "expected http://host:port"),
        ("http://am:notaport", "the port is not a number"),
        ("http://user@am:9093", "expected http://host:port"),
        ("http://[::1]:9093", "expected http://host:port"),
    ] {
        let e = Target::parse(bad).expect_err(bad).to_string();
        assert!(
            e.starts_with(&format!("console.alertmanager {bad:?}: ")),
            "{e}"
        );
        assert!(e.contains(why), "{bad}: {e}");
    }
}

/// A refusal by Alertmanager is an error that quotes its status and reason; a 200 is Ok.
#[tokio::test]
async fn post_reports_the_answer() {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = l.local_addr().expect("addr").port();
    let server = tokio::spawn(async move {
        let mut requests = Vec::new();
        for answer in [
            "HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\n\r\n\"labels missing\"",
            "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        ] {
            let (mut s, _) = l.accept().await.expect("accept");
            let mut buf = vec![0u8; 8192];
            let n = s.read(&mut buf).await.expect("read");
            requests.push(String::from_utf8_lossy(&buf[..n]).into_owned());
            s.write_all(answer.as_bytes()).await.expect("write");
        }
        requests
    });
    let target = Target::parse(&format!("http://127.0.0.1:{port}/am")).expect("url");
    let mut a = Alerts::default();
    a.observe(view("active", "critical"));
    let batch = a.due(t(0));
    let e = post(&target, &batch).await.expect_err("400");
    assert_eq!(
        e.to_string(),
        format!(
            "alertmanager 127.0.0.1:{port}: POST /api/v2/alerts answered 400: \"labels missing\""
        )
    );
    post(&target, &batch).await.expect("200");
    let requests = server.await.expect("server");
    assert!(
        requests[0].starts_with("POST /am/api/v2/alerts HTTP/1.1\r\n"),
        "{}",
        requests[0]
    );
    assert!(requests[0].contains("Content-Type: application/json"));

    let closed = Target::parse(&format!("http://127.0.0.1:{port}")).expect("url");
    let e = post(&closed, &batch).await.expect_err("nobody listens");
    assert!(
        e.to_string()
            .starts_with(&format!("alertmanager 127.0.0.1:{port}: ")),
        "{e}"
    );
}
