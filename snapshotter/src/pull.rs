//! Placeholder until the `pull` command lands.

/// Command-line arguments.
#[derive(clap::Args, Debug)]
pub struct PullArgs {}

/// Runs the command.
pub fn main(_args: PullArgs) -> crate::Result<()> {
    Err(crate::Error::Io {
        context: "pull".into(),
        source: std::io::Error::other("not built yet"),
    })
}
