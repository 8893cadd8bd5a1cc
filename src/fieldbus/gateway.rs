//! Devices behind one Modbus TCP gateway: many unit ids, one address, one connection.
//!
//! A Moxa MGate or a UPS network card fronts 20 to 40 racks on RS-485. It accepts only a few TCP
//! connections and serves one request at a time on its serial side, so 40 pollers with 40
//! connections overload it. Every `modbus-tcp` device of one `address` (when there are several)
//! therefore goes through one [`Gateway`] task per allowed connection (`connections`, default 1):
//! it owns the connection, hands it to the device whose poll is due earliest ([`Schedule`], the
//! RTU bus owner's), and sends one request at a time. A unit id that does not answer costs its own
//! timeout (the connection is then dropped, as a late answer could be taken for the next device's,
//! and the next device reconnects at once). A gateway that cannot be reached fails every device
//! behind it, each error naming the gateway address; for [`RECONNECT_AFTER`] after a failed
//! connect the devices that fall due fail at once with the same reason, so a gateway that does not
//! even refuse (a dead host) does not cost every device its timeout in turn.

use std::time::Duration;

use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::clock::Now;
use crate::config::Device;
use crate::fieldbus::modbus::ModbusDevice;
use crate::fieldbus::schedule::Schedule;
use crate::fieldbus::{Counters, LinkError, Reading};

/// After a failed connect, devices that fall due within this time fail with the same reason
/// without another attempt. Short enough that a gateway that comes back is polled within a
/// second, long enough that a dead host's connect timeout is paid once a second, not once a
/// device.
pub const RECONNECT_AFTER: Duration = Duration::from_secs(1);

/// One device behind the gateway.
struct Member {
    /// Its index in the configuration.
    index: usize,
    id: String,
    unit: u8,
    poll_interval: Duration,
    link: ModbusDevice,
}

/// One connection to a gateway address and the devices that take turns on it.
pub struct Gateway {
    address: String,
    members: Vec<Member>,
    /// The connection, between polls (a device holds it while it polls).
    connection: Option<TcpStream>,
    /// The last connect that failed, and why; cleared by the next answer.
    down: Option<(Instant, String)>,
}

impl Gateway {
    /// `devices` are (config index, device), all `modbus-tcp` at `address`.
    pub fn new(address: String, devices: Vec<(usize, Device)>, counters: &Counters) -> Gateway {
        let members = devices
            .into_iter()
            .map(|(index, d)| Member {
                index,
                id: d.id.clone(),
                unit: d.unit,
                poll_interval: d.poll_interval,
                link: ModbusDevice::new(d, address.clone(), counters.clone()),
            })
            .collect();
        Gateway {
            address,
            members,
            connection: None,
            down: None,
        }
    }

    /// Polls every member until `cancel`, each on its own interval, one request at a time.
    pub async fn run(mut self, tx: mpsc::Sender<Reading>, cancel: CancellationToken) {
        let mut schedule =
            Schedule::new(self.members.iter().map(|m| m.poll_interval), Instant::now());
        tracing::info!(
            gateway = %self.address,
            devices = self.members.len(),
            "gateway connection started"
        );
        while let Some((slot, due)) = schedule.next_due() {
            // Devices fall due together (all at start, then each a poll interval later), so
            // most polls are due already: no timer for those.
            if due > Instant::now() {
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = tokio::time::sleep_until(due) => {}
                }
            }
            let reading = tokio::select! {
                _ = cancel.cancelled() => break,
                r = self.poll(slot) => r,
            };
            schedule.served(slot, Instant::now());
            if let Err(e) = &reading.outcome {
                tracing::debug!(error = %e, "poll failed");
            }
            if tx.send(reading).await.is_err() {
                break; // the engine is gone: shutting down
            }
        }
        if let Some(m) = self.members.first_mut() {
            m.link.adopt(self.connection.take());
            m.link.close().await;
        }
        tracing::debug!(gateway = %self.address, "gateway connection stopped");
    }

    /// Polls the member in `slot` on the shared connection.
    async fn poll(&mut self, slot: usize) -> Reading {
        let Some(m) = self.members.get_mut(slot) else {
            return Reading {
                device: 0,
                at: Now::system(),
                latency: Duration::ZERO,
                outcome: Ok(Vec::new()),
            };
        };
        let wrap = |reason: String| LinkError::Gateway {
            device: m.id.clone(),
            address: self.address.clone(),
            unit: m.unit,
            reason,
        };
        if self.connection.is_none() {
            if let Some((at, reason)) = &self.down {
                if at.elapsed() < RECONNECT_AFTER {
                    return Reading {
                        device: m.index,
                        at: Now::system(),
                        latency: Duration::ZERO,
                        outcome: Err(wrap(format!("cannot connect: {reason}"))),
                    };
                }
            }
        }
        m.link.adopt(self.connection.take());
        let mut reading = m.link.poll(m.index).await;
        self.connection = m.link.release();
        match &reading.outcome {
            Err(LinkError::Connect { reason, .. }) => {
                if self.down.is_none() {
                    tracing::warn!(gateway = %self.address, %reason, "gateway unreachable: every device behind it fails until it answers");
                }
                self.down = Some((Instant::now(), reason.clone()));
            }
            Ok(_) if self.down.take().is_some() => {
                tracing::info!(gateway = %self.address, "gateway back");
            }
            _ => {}
        }
        reading.outcome = reading.outcome.map_err(|e| wrap(reason_of(e)));
        reading
    }
}

/// What went wrong, without the device (the gateway's message names it with its unit).
fn reason_of(e: LinkError) -> String {
    match e {
        LinkError::Connect { reason, .. } => format!("cannot connect: {reason}"),
        LinkError::Timeout {
            table,
            register,
            timeout,
            ..
        } => format!("{table} register {register}: no answer within {timeout:?}"),
        LinkError::Transport {
            table,
            register,
            reason,
            ..
        } => format!("{table} register {register}: {reason}"),
        other => other.to_string(),
    }
}

/// Splits the devices of one address over `connections` gateways, in turn, so each connection
/// carries about as many devices.
pub fn split(devices: Vec<(usize, Device)>, connections: usize) -> Vec<Vec<(usize, Device)>> {
    let n = connections.clamp(1, devices.len().max(1));
    let mut groups: Vec<Vec<(usize, Device)>> = (0..n).map(|_| Vec::new()).collect();
    for (k, d) in devices.into_iter().enumerate() {
        groups[k % n].push(d);
    }
    groups
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// A fake Modbus TCP gateway: answers FC 03 for every unit with 42s, except `silent`, whose
    /// requests it reads and never answers (a rack that is off behind a live gateway).
    async fn gateway(silent: u8) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut head = [0u8; 7];
                    while s.read_exact(&mut head).await.is_ok() {
                        let len = usize::from(u16::from_be_bytes([head[4], head[5]]));
                        let mut pdu = vec![0u8; len.saturating_sub(1)];
                        if s.read_exact(&mut pdu).await.is_err() || head[6] == silent {
                            continue;
                        }
                        let count = u16::from_be_bytes([pdu[3], pdu[4]]);
                        let mut reply = head[..4].to_vec();
                        // Length: unit id, function code, byte count, then the registers.
                        reply.extend_from_slice(&(3 + 2 * count).to_be_bytes());
                        reply.extend_from_slice(&[head[6], 3, (2 * count) as u8]);
                        for _ in 0..count {
                            reply.extend_from_slice(&42u16.to_be_bytes());
                        }
                        if s.write_all(&reply).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        addr
    }

    fn devices(addr: &str) -> Vec<(usize, Device)> {
        let mut text = "[site]\nid = \"s\"\ngateway = \"g\"\n".to_string();
        for (id, unit) in [("ok", 1), ("off", 7)] {
            text.push_str(&format!(
                "[[devices]]\nid = \"{id}\"\nzone = \"z\"\naddress = \"{addr}\"\nunit = {unit}\n\
                 poll_interval = \"200ms\"\ntimeout = \"200ms\"\n\
                 [[devices.points]]\nid = \"t\"\naddress = 116\n"
            ));
        }
        let cfg =
            crate::config::Config::from_toml(&text, crate::config::Role::Gateway).expect("config");
        cfg.devices.into_iter().enumerate().collect()
    }

    /// Unit 7 never answers; unit 1 on the same connection is answered at every one of its
    /// polls: the silent unit costs its own timeout, not its neighbour's answers.
    #[tokio::test]
    async fn a_silent_unit_fails_alone() {
        let addr = gateway(7).await;
        let counters = Counters::new(2);
        let owner = Gateway::new(addr.clone(), devices(&addr), &counters);
        let (tx, mut rx) = mpsc::channel(64);
        let cancel = CancellationToken::new();
        let task = tokio::spawn(owner.run(tx, cancel.clone()));
        let mut ok = 0;
        let mut off = 0;
        while ok + off < 12 {
            let r = tokio::time::timeout(Duration::from_secs(5), rx.recv())
                .await
                .expect("a reading within 5 s")
                .expect("gateway running");
            match r.device {
                0 => {
                    let points = r.outcome.expect("unit 1 answers");
                    assert_eq!(points[0].result.as_ref().map(|d| d.value), Ok(42.0));
                    ok += 1;
                }
                _ => {
                    let e = r.outcome.expect_err("unit 7 is silent").to_string();
                    assert_eq!(
                        e,
                        format!("device off (unit 7 behind gateway {addr}): holding register 116: no answer within 200ms")
                    );
                    off += 1;
                }
            }
        }
        // Taking turns: neither unit got all the polls.
        assert!(ok >= 5 && off >= 5, "ok {ok}, off {off}");
        cancel.cancel();
        let _ = task.await;
    }

    /// A gateway nobody listens on: every device fails, naming the gateway.
    #[tokio::test]
    async fn a_dead_gateway_fails_every_device_naming_its_address() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        drop(listener);
        let counters = Counters::new(2);
        let owner = Gateway::new(addr.clone(), devices(&addr), &counters);
        let (tx, mut rx) = mpsc::channel(64);
        let cancel = CancellationToken::new();
        let task = tokio::spawn(owner.run(tx, cancel.clone()));
        let mut seen = [false, false];
        while !(seen[0] && seen[1]) {
            let r = tokio::time::timeout(Duration::from_secs(5), rx.recv())
                .await
                .expect("a reading within 5 s")
                .expect("gateway running");
            let e = r.outcome.expect_err("nothing listens").to_string();
            let (id, unit) = if r.device == 0 { ("ok", 1) } else { ("off", 7) };
            assert!(
                e.starts_with(&format!(
                    "device {id} (unit {unit} behind gateway {addr}): cannot connect: "
                )),
                "{e}"
            );
            seen[r.device] = true;
        }
        cancel.cancel();
        let _ = task.await;
    }
}
