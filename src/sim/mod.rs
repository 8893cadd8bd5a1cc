//! The simulated battery rack + UPS (stub, being built).

/// `emberwatch sim` arguments.
#[derive(clap::Args, Debug, Clone)]
pub struct SimArgs {}

pub async fn run_cli(_args: SimArgs) -> anyhow::Result<()> {
    anyhow::bail!("sim: not built yet")
}
