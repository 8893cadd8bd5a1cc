//! The console page in a real browser (issue 12, steps 1-3), as the night-shift operator sees it
//! on the NOC wall: Debian's Chromium, headless, driven over WebDriver (chromedriver) against the
//! real console, gateway, simulator and mosquitto. The zone tile turns as off-gas rises, the alarm
//! arrives live (no reload), she logs in and acknowledges, and the page shows the state change.
//!
//! Screenshots of the wall board at each level go to `$EMBERWATCH_SCREENSHOTS` (default: the
//! test's target tmp dir); docs/screenshots/ holds a copy for the README.

mod common;
mod page_harness;

use std::path::PathBuf;
use std::time::Duration;

use common::{gateway_config, publish, Daemon, Mosquitto, Sim, P};
use fantoccini::Locator;
use page_harness::browser::Browser;
use page_harness::console::{Console, PASSWORD, USER};

/// The off-gas rule of config/emberwatch.toml, and a drain whose one agent never answers, so
/// the tile shows a drain in progress.
const RULES: &str = r#"
[[rules]]
id = "offgas"
points = ["*/offgas"]
above = { warning = 20.0, critical = 100.0 }
deadband = 5.0

[drain]
trigger = "critical"
deadline = "120s"
agents = ["lb-1"]
"#;

const LIVE: Duration = Duration::from_secs(15);
const OFFGAS_ROW: &str = r#"#alarm-rows tr[data-alarm="rack-01/offgas/offgas"]"#;

fn screenshots() -> PathBuf {
    std::env::var_os("EMBERWATCH_SCREENSHOTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("screenshots"))
}

/// A JavaScript test of the room-1 tile's level.
fn tile_is(level: &str) -> String {
    format!(r#"document.querySelector('.tile[data-zone="room-1"]')?.dataset.level === '{level}'"#)
}

async fn notice_says(b: &Browser, kind: &str, text: &str) {
    let text_js = serde_json::to_string(text).expect("json");
    b.wait_until(
        &format!("a {kind} notice saying {text:?}"),
        &format!(
            "[...document.querySelectorAll('.notice[data-kind={kind}]')].some(n => n.textContent.includes({text_js}))"
        ),
        LIVE,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_sees_offgas_live_logs_in_and_acknowledges() {
    let broker = Mosquitto::start().await;
    let sim = Sim::start("normal", 1).await;
    let storage = tempfile::tempdir().expect("tempdir");
    let gateway = Daemon::start(&gateway_config(
        broker.port(),
        sim.port(),
        storage.path(),
        RULES,
    ));
    let console = Console::start(broker.port(), "").await;
    let b = Browser::start(1920, 1080).await;
    b.open(&console.url("/")).await;
    let shots = screenshots();

    // Step 1: the wall board. room-1 is normal, the gateway online, no alarm.
    b.wait_until("room-1 normal", &tile_is("normal"), LIVE)
        .await;
    b.wait_until(
        "gateway gw-t online",
        r#"document.querySelector('.gw[data-gateway="gw-t"]')?.dataset.state === 'online'"#,
        LIVE,
    )
    .await;
    assert!(
        b.text(".tile").await.contains("✓ NORMAL"),
        "level in words, not colour alone"
    );
    assert_eq!(b.text("#live").await, "live");
    b.client
        .execute("window.__sameDocument = true;", vec![])
        .await
        .expect("mark the document");
    b.screenshot(&shots.join("normal.png")).await;

    // Step 2: off-gas rises. Each level arrives on the open page, live.
    sim.write(121, 50).await;
    b.wait_until("room-1 warning", &tile_is("warning"), LIVE)
        .await;
    b.wait_until(
        "the off-gas alarm, active and unacknowledged, at the top",
        &format!(
            r#"document.querySelector('#alarm-rows tr') === document.querySelector('{OFFGAS_ROW}')
               && document.querySelector('{OFFGAS_ROW}').dataset.isa === 'active_unacknowledged'"#
        ),
        LIVE,
    )
    .await;
    let row = b.text(OFFGAS_ROW).await;
    for want in [
        "ACTIVE, UNACKED",
        "WARNING",
        "50.0 ppm",
        "20.0 ppm",
        "Acknowledge",
    ] {
        assert!(row.contains(want), "the alarm row lacks {want:?}: {row}");
    }
    assert!(b.text(".tile").await.contains("▲ WARNING"));
    b.screenshot(&shots.join("warning.png")).await;

    sim.write(121, 150).await;
    b.wait_until("room-1 critical", &tile_is("critical"), LIVE)
        .await;
    b.wait_until(
        "the drain requested on the tile",
        r#"document.querySelector('.tile[data-zone="room-1"] .agent')?.textContent === 'lb-1: pending'"#,
        LIVE,
    )
    .await;
    b.screenshot(&shots.join("critical.png")).await;

    sim.write(116, 700).await; // 70.0 °C: the cell-overtemp emergency
    b.wait_until("room-1 emergency", &tile_is("emergency"), LIVE)
        .await;
    assert!(b.text(".tile").await.contains("✖ EMERGENCY"));
    b.screenshot(&shots.join("emergency.png")).await;
    let same = b
        .client
        .execute("return window.__sameDocument === true;", vec![])
        .await
        .expect("execute");
    assert_eq!(
        same,
        serde_json::json!(true),
        "the page reloaded instead of updating live"
    );

    // Step 3: a command without a login is refused, and the page says why.
    let ack = format!("{OFFGAS_ROW} button.ack");
    click(&b, &ack).await;
    notice_says(&b, "error", "log in first (401)").await;

    // A wrong password is told as such.
    login(&b, USER, "wrong").await;
    notice_says(&b, "error", "Login failed").await;

    login(&b, USER, PASSWORD).await;
    b.wait_until(
        "logged in as mina",
        "document.getElementById('user').textContent === 'mina'",
        LIVE,
    )
    .await;
    b.wait_until("the board after login", &tile_is("emergency"), LIVE)
        .await;
    click(&b, &ack).await;
    notice_says(
        &b,
        "ok",
        "Acknowledge rack-01/offgas/offgas: done by gateway gw-t",
    )
    .await;
    b.wait_until(
        "the alarm acknowledged by mina",
        &format!(
            r#"document.querySelector('{OFFGAS_ROW}')?.dataset.isa === 'active_acknowledged'
               && document.querySelector('{OFFGAS_ROW}').textContent.includes('acked by mina')"#
        ),
        LIVE,
    )
    .await;
    b.wait_until(
        "the acknowledgement in the audit trail",
        "document.getElementById('audit').textContent.includes('mina ack rack-01/offgas/offgas on gw-t: ok')",
        LIVE,
    )
    .await;

    // The gateway refuses to shelve an emergency alarm: its reason is on the page (422).
    let heat_row = r#"#alarm-rows tr[data-alarm="rack-01/cell_temp_max/cell-overtemp"]"#;
    click(&b, &format!("{heat_row} button.shelve")).await;
    b.client
        .find(Locator::Id("shelve-reason"))
        .await
        .expect("reason field")
        .send_keys("sensor under test")
        .await
        .expect("type reason");
    click(&b, "#shelve-ok").await;
    notice_says(&b, "error", "gateway gw-t refused: ").await;
    notice_says(&b, "error", "(422)").await;
    let refusal = b.text(".notice[data-kind=error]").await;
    assert!(
        refusal.contains("emergency"),
        "the gateway's reason: {refusal}"
    );

    // A gateway that takes the command and never answers (stopped, its status still online):
    // after 5 s the page says so (504).
    gateway.signal("STOP");
    click(&b, &format!("{heat_row} button.ack")).await;
    notice_says(&b, "error", "no answer from gateway gw-t within 5 s").await;
    gateway.signal("CONT");

    // The trend of the point shows how it got there.
    click(&b, &format!("{OFFGAS_ROW} button.trend-btn")).await;
    b.wait_until(
        "the off-gas trend drawn",
        "document.querySelector('#trend-chart canvas') && /\\d+ buckets/.test(document.getElementById('trend-note').textContent)",
        LIVE,
    )
    .await;
    b.close().await;
}

/// An update on the stream changes the one alarm row it is about, in place: the row is the
/// same element with its new state, and the other rows and the zone tile are not rebuilt (a
/// property the test sets on each element survives). With 1,000 alarms on the wall, redrawing
/// the whole list on every update is what made the page slow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_update_changes_its_row_in_place() {
    let broker = Mosquitto::start().await;
    let sim = Sim::start("normal", 1).await;
    let storage = tempfile::tempdir().expect("tempdir");
    let _gateway = Daemon::start(&gateway_config(
        broker.port(),
        sim.port(),
        storage.path(),
        RULES,
    ));
    let console = Console::start(broker.port(), "").await;
    let b = Browser::start(1920, 1080).await;
    b.open_ready(&console.url("/"), LIVE).await;
    sim.write(121, 50).await; // off-gas warning
    sim.write(116, 600).await; // 60.0 °C: cell-overtemp critical
    let heat_row = r#"#alarm-rows tr[data-alarm="rack-01/cell_temp_max/cell-overtemp"]"#;
    b.wait_until(
        "both alarms listed, unacknowledged",
        &format!(
            r#"document.querySelector('{OFFGAS_ROW}')?.dataset.isa === 'active_unacknowledged'
               && document.querySelector('{heat_row}')?.dataset.isa === 'active_unacknowledged'
               && document.querySelectorAll('#alarm-rows tr').length === 2"#
        ),
        LIVE,
    )
    .await;
    b.wait_until("room-1 critical", &tile_is("critical"), LIVE)
        .await;
    // Let the drain's and the zone's own updates settle, then mark every element.
    tokio::time::sleep(Duration::from_secs(1)).await;
    b.client
        .execute(
            &format!(
                r#"document.querySelector('{OFFGAS_ROW}').__mark = 'offgas';
                   document.querySelector('{heat_row}').__mark = 'heat';
                   document.querySelector('.tile[data-zone="room-1"]').__mark = 'tile';"#
            ),
            vec![],
        )
        .await
        .expect("mark the rows");

    // Someone (another console, a script) acknowledges the cell-overtemp alarm: its row
    // changes state and moves below the unacknowledged off-gas one.
    publish(
        broker.port(),
        &format!("{P}/gateways/gw-t/cmd/ack"),
        br#"{"alarm":"rack-01/cell_temp_max/cell-overtemp","by":"script"}"#,
        false,
    )
    .await;
    b.wait_until(
        "the cell-overtemp row acknowledged, below the off-gas one",
        &format!(
            r#"document.querySelector('{heat_row}')?.dataset.isa === 'active_acknowledged'
               && document.querySelector('{heat_row} td.isa').textContent === 'active, acked'
               && document.querySelector('#alarm-rows tr') === document.querySelector('{OFFGAS_ROW}')"#
        ),
        LIVE,
    )
    .await;
    let marks = b
        .client
        .execute(
            &format!(
                r#"return [document.querySelector('{OFFGAS_ROW}').__mark,
                           document.querySelector('{heat_row}').__mark,
                           document.querySelector('.tile[data-zone="room-1"]').__mark];"#
            ),
            vec![],
        )
        .await
        .expect("read the marks");
    assert_eq!(
        marks,
        serde_json::json!(["offgas", "heat", "tile"]),
        "[off-gas row, cell-overtemp row, room-1 tile]: an element without its mark was rebuilt"
    );
    let row = b.text(heat_row).await;
    assert!(row.contains("acked by script"), "{row}");
    b.close().await;
}

/// A big site's alarm list: the 50 most urgent alarms are drawn, the others are counted under
/// them by state, the count follows live updates, and "Show all" draws every one (issue 12:
/// the first render cannot wait for a thousand rows, but no active alarm may be out of reach).
/// Sixty alarms from a gateway the test plays: ten acknowledged, fifty not. The page itself
/// carries the 50 drawn and the counts; the full list follows the first frame.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_alarm_list_counts_what_it_does_not_show_and_shows_all_on_request() {
    let broker = Mosquitto::start().await;
    let console = Console::start(broker.port(), "").await;
    let event = |seq: u64, rack: u64, acked: bool, since: &str| {
        let alarm = format!("rack-{rack:02}/cell_temp_max/cell-overtemp");
        let isa = if acked {
            "active_acknowledged"
        } else {
            "active_unacknowledged"
        };
        let e = serde_json::json!({"event_id": format!("gw-x-{seq}"), "seq": seq,
            "site": "test-site", "gateway": "gw-x", "alarm": alarm, "rule": "cell-overtemp",
            "zone": "room-1", "device": format!("rack-{rack:02}"), "point": "cell_temp_max",
            "kind": "threshold", "severity": "critical", "state": "active", "acked": acked,
            "isa_state": isa, "value": 57.2, "threshold": 55.0, "unit": "degC",
            "message": "hot", "time": since, "since": since});
        (format!("{P}/alarms/room-1/{alarm}"), e.to_string())
    };
    for seq in 1..=60 {
        let (topic, body) = event(seq, seq, seq <= 10, "2026-11-29T15:00:00Z");
        publish(broker.port(), &topic, body.as_bytes(), false).await;
    }
    let deadline = tokio::time::Instant::now() + LIVE;
    while console
        .get("/api/alarms?state=active")
        .await
        .as_array()
        .map_or(0, Vec::len)
        < 60
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the console does not hold the 60 alarms"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The page carries only what its first screen draws: the 50 most urgent alarms (the 50
    // unacknowledged ones) and how many there are in each state; the rest comes after.
    let (html, ok) = page_harness::console::curl(&["-sf", &console.url("/")]).await;
    assert!(ok, "GET /: {html}");
    let block = html
        .split_once(r#"id="first-screen">"#)
        .and_then(|(_, rest)| rest.split_once("</script>"))
        .map(|(json, _)| json)
        .unwrap_or_else(|| panic!("no first-screen block in the page: {html}"));
    let first: serde_json::Value = serde_json::from_str(block).expect("the block is JSON");
    let inline = first["alarms"].as_array().expect("alarms");
    assert_eq!(inline.len(), 50, "{block}");
    assert!(
        inline
            .iter()
            .all(|a| a["isa_state"] == "active_unacknowledged"),
        "{block}"
    );
    assert_eq!(
        first["alarm_counts"],
        serde_json::json!({"active_unacknowledged": 50, "active_acknowledged": 10})
    );

    let b = Browser::start(1920, 1080).await;
    b.open_ready(&console.url("/"), LIVE).await;
    b.wait_until(
        "the full alarm list asked for after the first frame",
        "performance.getEntriesByName(location.origin + '/api/alarms').length === 1",
        LIVE,
    )
    .await;
    const ROWS: &str = "document.querySelectorAll('#alarm-rows tr[data-alarm]').length";
    b.wait_until("50 rows drawn", &format!("{ROWS} === 50"), LIVE)
        .await;
    assert_eq!(b.text("#alarm-count").await, "(60)");
    let more = b.text("#alarm-more").await;
    assert!(
        more.contains("10 more alarms not shown (10 active, acked).")
            && more.contains("Show all 60"),
        "{more}"
    );

    // A new alarm arrives live: the newest unacknowledged one, it is drawn first, an
    // acknowledged one leaves the 50 drawn, and the count under the list says so.
    let (topic, body) = event(61, 61, false, "2026-11-29T15:05:00Z");
    publish(broker.port(), &topic, body.as_bytes(), false).await;
    b.wait_until(
        "rack-61 drawn and 11 counted under the list",
        r#"document.querySelector('#alarm-rows tr').dataset.alarm === 'rack-61/cell_temp_max/cell-overtemp'
           && document.getElementById('alarms-hidden')?.dataset.hidden === '11'"#,
        LIVE,
    )
    .await;
    assert_eq!(
        b.client
            .execute(&format!("return {ROWS};"), vec![])
            .await
            .expect("rows"),
        serde_json::json!(50)
    );
    assert!(b
        .text("#alarm-more")
        .await
        .contains("11 more alarms not shown (1 active, unacked; 10 active, acked)."));

    assert_eq!(b.text("#alarm-count").await, "(61)");

    click(&b, "#alarms-toggle").await;
    b.wait_until("all 61 rows drawn", &format!("{ROWS} === 61"), LIVE)
        .await;
    let all = b.text("#alarm-more").await;
    assert!(
        all.contains("All 61 alarms shown.") && all.contains("Show only the first 50"),
        "{all}"
    );
    b.close().await;
}

/// A redundant pair on the wall board (issue 13): the two gateways side by side under one
/// heading naming the active one, since when and why; when the active one dies, the page turns
/// live to the other, with the reason it took over, and the dead one stays in its pair.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_sees_which_gateway_of_the_pair_is_active_since_when_and_why() {
    let broker = Mosquitto::start().await;
    let console = Console::start(broker.port(), "").await;
    let status = |gw: &str, role: &str, since: &str, reason: &str| {
        let peer = if gw == "gw-b1" { "gw-b2" } else { "gw-b1" };
        serde_json::json!({"state": "online", "role": role, "peer": peer,
            "role_since": since, "role_reason": reason})
        .to_string()
    };
    let topic = |gw: &str| format!("{}/gateways/{gw}/status", common::P);
    let b1 = status(
        "gw-b1",
        "active",
        "2026-11-29T15:00:00Z",
        "priority 1 of the pair",
    );
    let b2 = status(
        "gw-b2",
        "standby",
        "2026-11-29T15:00:01Z",
        "peer gw-b1 is active",
    );
    common::publish(broker.port(), &topic("gw-b1"), b1.as_bytes(), true).await;
    common::publish(broker.port(), &topic("gw-b2"), b2.as_bytes(), true).await;
    let b = Browser::start(1920, 1080).await;
    b.open(&console.url("/")).await;
    const PAIR: &str = r#"document.querySelector('.pair[data-pair="gw-b1 gw-b2"]')"#;
    b.wait_until(
        "the pair with gw-b1 active and gw-b2 standby",
        &format!(
            r#"{PAIR}?.dataset.active === 'gw-b1' && {PAIR}.querySelector('.gw[data-gateway="gw-b2"]')?.dataset.state === 'standby'"#
        ),
        LIVE,
    )
    .await;
    assert!(
        b.text(".pair .pair-head")
            .await
            .starts_with("Pair gw-b1 ⇄ gw-b2 · active: gw-b1 since "),
        "{}",
        b.text(".pair .pair-head").await
    );

    // gw-b1 dies (its last will), gw-b2 takes over: the page follows without a reload.
    common::publish(
        broker.port(),
        &topic("gw-b1"),
        br#"{"state":"offline"}"#,
        true,
    )
    .await;
    let took = status(
        "gw-b2",
        "active",
        "2026-11-29T15:03:04Z",
        "peer gw-b1 offline (last will)",
    );
    common::publish(broker.port(), &topic("gw-b2"), took.as_bytes(), true).await;
    b.wait_until(
        "gw-b2 active, gw-b1 offline in the same pair",
        &format!(
            r#"{PAIR}?.dataset.active === 'gw-b2' && {PAIR}.querySelector('.gw[data-gateway="gw-b1"]')?.dataset.state === 'offline'"#
        ),
        LIVE,
    )
    .await;
    let head = b.text(".pair .pair-head").await;
    assert!(head.ends_with("(peer gw-b1 offline (last will))"), "{head}");
    b.screenshot(&screenshots().join("pair-takeover.png")).await;
    b.close().await;
}

/// Clicks the element `css` names. A row gets new buttons when its alarm changes, so a button
/// found a moment ago may be gone; it is found again (as a person would move the pointer).
async fn click(b: &Browser, css: &str) {
    for _ in 0..5 {
        let e = b
            .client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("{css}: {e}"));
        match e.click().await {
            Ok(()) => return,
            Err(fantoccini::error::CmdError::Standard(w))
                if w.error == fantoccini::error::ErrorStatus::StaleElementReference => {}
            Err(e) => panic!("click {css}: {e}"),
        }
    }
    panic!("{css}: stale five times in a row");
}

async fn login(b: &Browser, user: &str, password: &str) {
    let field = |id: &'static str| async move {
        let e = b.client.find(Locator::Id(id)).await.expect(id);
        e.clear().await.expect("clear");
        e
    };
    field("login-user")
        .await
        .send_keys(user)
        .await
        .expect("type user");
    field("login-password")
        .await
        .send_keys(password)
        .await
        .expect("type password");
    click(b, "#login-submit").await;
}
