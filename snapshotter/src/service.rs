//! Placeholder until the `service` command lands.

/// Command-line arguments.
#[derive(clap::Args, Debug)]
pub struct RunArgs {}

/// Runs the command.
pub fn main(_args: RunArgs) -> crate::Result<()> {
    Err(crate::Error::Io {
        context: "service".into(),
        source: std::io::Error::other("not built yet"),
    })
}
