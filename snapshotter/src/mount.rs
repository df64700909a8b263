//! Placeholder until the `mount` command lands.

/// Command-line arguments.
#[derive(clap::Args, Debug)]
pub struct MountArgs {}

/// Runs the command.
pub fn main(_args: MountArgs) -> crate::Result<()> {
    Err(crate::Error::Io {
        context: "mount".into(),
        source: std::io::Error::other("not built yet"),
    })
}
