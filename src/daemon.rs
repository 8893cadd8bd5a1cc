//! The gateway daemon: wires fieldbus pollers, the rule engine and MQTT together (stub).

use crate::config::Config;

pub async fn run(_cfg: Config) -> anyhow::Result<()> {
    anyhow::bail!("run: not built yet")
}

pub fn summary(cfg: &Config) -> String {
    format!("{} devices", cfg.devices.len())
}

pub async fn read_once(_cfg: &Config, _device: Option<&str>) -> anyhow::Result<bool> {
    anyhow::bail!("read: not built yet")
}
