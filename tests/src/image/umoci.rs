//! OCI layouts made with umoci from hand-made layer tars: an empty image to start from,
//! and a layer tar added on top of a tagged image as a new tag (`umoci raw add-layer`
//! stores the tar as it is, gzip-compressed, and records its diffID).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::error::Result;
use crate::process::run_checked;

/// Longest one umoci command may take.
const TIMEOUT: Duration = Duration::from_secs(300);

/// The tag of the empty image [`new_layout`] makes.
pub const EMPTY: &str = "empty";

/// `umoci init --layout LAYOUT` and `umoci new --image LAYOUT:empty` (an image with no
/// layers, tag [`EMPTY`]); output to `log`.
///
/// Errors: umoci failing (with the log tail).
pub fn new_layout(layout: &Path, log: &Path) -> Result<()> {
    run_checked(
        Command::new("umoci").args(["init", "--layout"]).arg(layout),
        log,
        TIMEOUT,
    )?;
    run_checked(
        Command::new("umoci").args(["new", "--image", &image(layout, EMPTY)]),
        log,
        TIMEOUT,
    )
    .map(drop)
}

/// `umoci raw add-layer --image LAYOUT:FROM --tag TAG TAR`: the image `from` with the
/// uncompressed layer tar `tar` on top, as `tag`.
///
/// Errors: umoci failing (with the log tail).
pub fn add_layer(layout: &Path, from: &str, tag: &str, tar: &Path, log: &Path) -> Result<()> {
    run_checked(
        Command::new("umoci")
            .args([
                "raw",
                "add-layer",
                "--image",
                &image(layout, from),
                "--tag",
                tag,
            ])
            .arg(tar),
        log,
        TIMEOUT,
    )
    .map(drop)
}

/// `LAYOUT:TAG`, umoci's image reference.
pub fn image(layout: &Path, tag: &str) -> String {
    format!("{}:{tag}", layout.display())
}
