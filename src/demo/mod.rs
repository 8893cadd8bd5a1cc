//! `emberwatch demo`: a battery-room fire, start to finish, on a machine with nothing installed.
//!
//! One process plays every part: the simulator runs `thermal-runaway`, an embedded broker carries
//! the messages, a redundant pair of real gateways (`pair.rs`) polls, alarms and coordinates the
//! drain, a real drain agent (its hook a one-second `sleep` standing in for a load balancer
//! draining) acknowledges, and a subscriber narrates what an operator would see. Mid-drain the
//! demo kills the active gateway, so the story shows the standby carry on. The narration is built
//! only from what arrives over MQTT: if a gateway did not publish it, the demo does not say it.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, Role};
use crate::mqtt::embedded;
use crate::sim::{self, Scenario, SimOptions};

mod console;
mod pair;
mod scratch;
mod story;
use pair::Gateway;
use story::Story;

/// Scenario time runs this many times faster than the clock, so the ~70 s fire fits in a minute.
pub const DEMO_SPEED: f64 = 2.0;

/// The demo gives up (and says so) after this long.
const DEMO_DEADLINE: Duration = Duration::from_secs(55);

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("demo: {0}")]
    Setup(String),
    #[error("demo: the story did not complete within {0:?}; missing: {1}")]
    Incomplete(Duration, String),
    #[error("demo: {0}")]
    Broken(String),
}

/// The demo's drain agent: one load balancer in front of the battery room's services.
const DEMO_AGENT: &str = "lb-demo";

/// The drain agent's configuration: its hook is `sleep 1`, the time a load balancer might take
/// to move its sessions (argv, no shell, as every hook).
fn agent_config(broker: SocketAddr, storage: &std::path::Path) -> String {
    format!(
        r#"
[site]
id = "demo-site"

[mqtt]
url = "mqtt://{broker}"
keep_alive = "5s"

[storage]
dir = "{storage}"

[agent]
id = "{DEMO_AGENT}"
zones = ["battery-room-1"]
drain = ["sleep", "1"]
restore = ["true"]
timeout = "10s"
"#,
        storage = storage.display()
    )
}

/// Runs the demo; returns once the story is told (or fails, saying what was not seen). With
/// `keep`, everything stays up after the story until Ctrl-C (or SIGTERM).
pub async fn run(keep: bool) -> Result<(), DemoError> {
    let t0 = Instant::now();
    let cancel = CancellationToken::new();
    let setup = |what: &str, e: &dyn std::fmt::Display| DemoError::Setup(format!("{what}: {e}"));

    // Port 1883 lets an operator watch with a stock mosquitto_sub; another one if it is taken.
    let broker =
        match embedded::start("127.0.0.1:1883".parse().map_err(|e| setup("address", &e))?).await {
            Ok(b) => b,
            Err(_) => embedded::start_on_free_port()
                .await
                .map_err(|e| setup("embedded broker", &e))?,
        };
    let sim = sim::start(
        SimOptions {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            unit: 1,
            scenario: Scenario::ThermalRunaway,
            speed: DEMO_SPEED,
        },
        cancel.child_token(),
    )
    .await
    .map_err(|e| setup("simulator", &e))?;
    // What demos killed before they could clean up left behind goes first (never a live
    // demo's): they are found by name and pid.
    let tmp = std::env::temp_dir();
    for stale in scratch::sweep(&tmp, scratch::alive) {
        tracing::info!(
            "demo: removed {}, left by a demo that no longer runs",
            stale.display()
        );
    }
    let storage = scratch::dir(&tmp, "");
    let mut cfgs = Vec::new();
    for gw in [pair::FIRST, pair::SECOND] {
        let text = pair::gateway_config(gw, broker.addr, sim.local_addr, &storage);
        cfgs.push(Config::from_toml(&text, Role::Gateway).map_err(|ps| {
            DemoError::Setup(format!(
                "built-in configuration of {gw} refused: {}",
                ps.iter()
                    .map(|p| p.to_string())
                    .collect::<Vec<_>>()
                    .join("; ")
            ))
        })?);
    }
    let prefix = format!("{}/{}", cfgs[0].mqtt.topic_prefix, cfgs[0].site.id);
    let agent_cfg = Config::from_toml(&agent_config(broker.addr, &storage), Role::DrainAgent)
        .map_err(|ps| {
            DemoError::Setup(format!(
                "built-in agent configuration refused: {}",
                ps.iter()
                    .map(|p| p.to_string())
                    .collect::<Vec<_>>()
                    .join("; ")
            ))
        })?;

    println!("emberwatch demo: a lithium-ion battery rack goes into thermal runaway.");
    println!(
        "  simulator (Modbus TCP) on {}, scenario thermal-runaway at {DEMO_SPEED}x speed",
        sim.local_addr
    );
    println!(
        "  embedded MQTT broker on {}; watch along with: mosquitto_sub -h {} -p {} -t '{prefix}/#' -v",
        broker.addr,
        broker.addr.ip(),
        broker.addr.port()
    );
    println!(
        "  the battery room is watched by a hot-standby pair: {} (priority 1: active when both \
         are up) and {} (priority 2: standby); mid-drain the demo kills the active one",
        pair::FIRST,
        pair::SECOND
    );
    // The console connects before the gateways start, so its page tells the whole story.
    let console = match console::start(broker.addr, pair::SITE, cancel.child_token()).await {
        Ok(c) => {
            println!(
                "  site console on {} (log in as {} with password {})",
                c.url,
                console::USER,
                c.password
            );
            Some(c)
        }
        Err(e) => {
            println!("  site console could not start ({e}); the story goes on without it");
            None
        }
    };
    println!("  everything below is what arrived over MQTT, as an operator would see it.\n");

    // The operator's subscriber connects before the gateways, so nothing is missed.
    let mut opts = MqttOptions::new(
        format!("emberwatch-demo-operator-{}", std::process::id()),
        broker.addr.ip().to_string(),
        broker.addr.port(),
    );
    opts.set_keep_alive(Duration::from_secs(5));
    let (client, mut events) = AsyncClient::new(opts, 256);
    client
        .subscribe(format!("{prefix}/#"), QoS::AtLeastOnce)
        .await
        .map_err(|e| setup("subscriber", &e))?;

    let agent_cancel = cancel.child_token();
    let agent = tokio::spawn(crate::drain::agent::serve(agent_cfg, agent_cancel.clone()));
    let mut gateways = Vec::new();
    for cfg in cfgs {
        gateways.push(Gateway::start(cfg).map_err(DemoError::Setup)?);
    }

    let mut story = Story::default();
    let deadline = tokio::time::Instant::now() + DEMO_DEADLINE;
    // The story's clock between messages: the verdict on duplicates waits a while after the
    // takeover, whether anything arrives or not.
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let outcome = loop {
        if story.complete() {
            break story.broken().map_or(Ok(()), |e| Err(DemoError::Broken(e)));
        }
        let ev = tokio::select! {
            _ = tokio::time::sleep_until(deadline) => {
                break Err(DemoError::Incomplete(DEMO_DEADLINE, story.missing()));
            }
            _ = tick.tick() => {
                story.tick(t0.elapsed());
                continue;
            }
            ev = events.poll() => ev,
        };
        match ev {
            Ok(ev) => narrate(&mut story, t0, &prefix, &ev),
            Err(e) => {
                break Err(DemoError::Setup(format!("subscriber lost the broker: {e}")));
            }
        }
        // Mid-drain, the active gateway dies.
        if let Some(victim) = story.kill_due() {
            if let Some(gw) = gateways.iter().find(|g| g.id == victim) {
                gw.kill();
                story.killed(&victim, t0.elapsed());
            }
        }
    };

    if keep && outcome.is_ok() {
        println!();
        println!("--keep: everything keeps running (the fire goes on in the simulator); press Ctrl-C to stop.");
        if let Some(c) = &console {
            println!(
                "  open {} and log in as {} with password {}",
                c.url,
                console::USER,
                c.password
            );
        }
        let stop = stop_requested();
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = &mut stop => break,
                ev = events.poll() => match ev {
                    Ok(ev) => narrate(&mut story, t0, &prefix, &ev),
                    // rumqttc reconnects on the next poll; do not spin meanwhile.
                    Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
                },
            }
        }
        println!("stopping.");
    }

    agent_cancel.cancel();
    // Let the gateways still alive and the agent say goodbye (offline status) before the broker
    // goes away. A gateway stops on its own thread; the narration goes on meanwhile.
    let stopping =
        futures::future::join_all(gateways.into_iter().map(|g| g.stop(Duration::from_secs(5))));
    tokio::pin!(stopping);
    let stop = async {
        let mut gateways_done = false;
        loop {
            tokio::select! {
                _ = &mut stopping, if !gateways_done => gateways_done = true,
                ev = tokio::time::timeout(Duration::from_millis(100), events.poll()) => {
                    if let Ok(Ok(ev)) = ev {
                        narrate(&mut story, t0, &prefix, &ev);
                    }
                }
            }
            if gateways_done && agent.is_finished() {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), stop).await;
    if let Some(c) = console {
        c.stop().await;
    }
    let _ = client.disconnect().await;
    cancel.cancel();
    sim.stopped().await;
    let _ = std::fs::remove_dir_all(&storage);

    match &outcome {
        Ok(()) => {
            println!();
            println!(
                "Done in {:.1} s. {} alarm events received; off-gas warned {:.1} s before the first smoke stage.",
                t0.elapsed().as_secs_f64(),
                story.events,
                story.lead_time().map(|d| d.as_secs_f64()).unwrap_or(f64::NAN)
            );
            if let (Some(offgas), Some(clear)) = (story.first_offgas, story.clearance) {
                println!(
                    "Traffic was drained and the power-cut clearance given {:.1} s after the first off-gas alarm{}.",
                    clear.saturating_sub(offgas).as_secs_f64(),
                    match story.first_smoke {
                        Some(smoke) if smoke > clear => format!(
                            ", {:.1} s before the first smoke",
                            (smoke - clear).as_secs_f64()
                        ),
                        _ => String::new(),
                    }
                );
            }
            if let Some(pair) = story.pair_summary() {
                println!("The pair: {pair}");
            }
            println!(
                "In a real room those seconds are minutes (2-30 of off-gas warning): enough to drain"
            );
            println!("every service in the zone and confirm it before the power is cut.");
        }
        Err(e) => println!("\n{e}"),
    }
    outcome
}

/// Tells what one MQTT event brought, if it is a publication under the demo's prefix.
fn narrate(story: &mut Story, t0: Instant, prefix: &str, ev: &Event) {
    if let Event::Incoming(Packet::Publish(p)) = ev {
        let topic = p.topic.strip_prefix(prefix).unwrap_or(&p.topic);
        if let Ok(json) = serde_json::from_slice::<Value>(&p.payload) {
            story.observe(t0.elapsed(), topic, &json);
        }
    }
}

/// Ctrl-C or SIGTERM: how a `demo --keep` is ended.
async fn stop_requested() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}
