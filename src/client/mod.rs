//! TEMPORARY placeholder until the client lands.
#[derive(clap::Args, Debug, Clone)]
pub struct ClientArgs {
    pub addr: Option<String>,
}
pub async fn run(_args: ClientArgs) -> anyhow::Result<()> {
    anyhow::bail!("client not built yet")
}
