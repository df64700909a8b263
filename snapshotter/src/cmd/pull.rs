//! `strata-snapshotter pull REF`: reads the image's metadata from the repository mount (or,
//! for an image not published there, from its registry), connects to containerd and runs
//! [`crate::pull::pull`], timing each step on stdout. An image with startup packs has them prefetched by the mount
//! in the background ([`crate::client::startup`]); the pull waits only for the first, small
//! one (the layers' catalogs), while it reads the image's manifest.

use std::time::Instant;

use namespace::{ImageName, Platform, paths};

use crate::client::startup::ask_mount;
use crate::containerd::snapshots::remote::RepositoryMount;
use crate::error::{Error, Result};
pub use crate::pull::PullArgs;
use crate::pull::containerd_client::Containerd;
use crate::pull::image::{self, Image};
use crate::pull::platform::platform_dir;
use crate::pull::registry::Registry;
use crate::pull::{image_from_registry, pull};

/// Runs `strata-snapshotter pull`.
pub fn main(args: PullArgs) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| Error::Io {
            context: "start tokio runtime".into(),
            source,
        })?;
    runtime.block_on(async move {
        let mut timer = Timer::new();
        // `pull` takes the publisher's names, also with its `docker://` prefix.
        let text = args.reference.as_str();
        let reference = ImageName::parse(text.strip_prefix("docker://").unwrap_or(text))?;
        let platform = match &args.platform {
            Some(p) => Platform::parse(p)?,
            None => Platform::node(),
        };
        let name = reference.public_path();
        let registry = Registry::new(&reference)?;
        // A mistyped or missing --mountpoint must not look like "image not published" and
        // send the pull to the registry.
        check_mountpoint(&args.mountpoint)?;
        let (mountpoint, path, p) = (args.mountpoint.clone(), name.clone(), platform.clone());
        // containerd is connected to while the metadata is read (and the connection given
        // up if reading it fails).
        let mut connecting = Connecting(tokio::spawn({
            let (address, namespace) = (args.address.clone(), args.namespace.clone());
            async move { Containerd::connect(&address, &namespace).await }
        }));
        let (asked, published) = tokio::task::spawn_blocking(move || {
            // The metadata and the startup packs, if the image has them, at once: the
            // mount answers once the first pack (the layers' catalogs) is in, while the
            // manifest is read; the other packs come in the background while the layers
            // are handed to containerd and the container starts.
            std::thread::scope(|scope| {
                let reading = scope.spawn(|| Image::read_platform(&mountpoint, &path, &p));
                let meta = image::metadata_dir(&mountpoint, &path);
                let asked = platform_dir(&meta, &path, &p)
                    .ok()
                    .flatten()
                    .map(|pdir| ask_mount(&pdir.join(paths::STARTUP)));
                let published = reading.join().unwrap_or_else(|_| {
                    Err(Error::ImageMetadata {
                        reference: path.clone(),
                        reason: "reading the image's metadata panicked".into(),
                    })
                });
                (asked, published)
            })
        })
        .await
        .map_err(|e| Error::Io {
            context: "read image metadata".into(),
            source: std::io::Error::other(e),
        })?;
        match asked {
            Some(Ok(Some(answer))) => println!("prefetching the startup working set: {answer}"),
            Some(Err(e)) => eprintln!("warning: {e}; the image's files are fetched as read"),
            _ => {}
        }
        let published = published?;
        let image = match published {
            Some(image) => {
                look_up_layers_ahead(&args.mountpoint, &image);
                image
            }
            None if args.remote_only => {
                return Err(Error::ImageMetadata {
                    reference: name.clone(),
                    reason: format!(
                        "{}: not published in the repository (and --remote-only)",
                        image::metadata_dir(&args.mountpoint, &name)
                            .join("manifest.json")
                            .display()
                    ),
                });
            }
            None => {
                println!("{name} is not in the repository: reading it from {}", registry.base());
                image_from_registry(&registry, &reference, &name, &platform).await?
            }
        };
        timer.step("metadata");
        let mut client = (&mut connecting.0).await.map_err(|e| Error::Io {
            context: format!("connecting to containerd at {}", args.address.display()),
            source: std::io::Error::other(e),
        })??;
        timer.step("connect");
        let pulled = pull(
            &mut client,
            &args,
            &image,
            &name,
            Some(&registry),
            &mut |w| timer.step(w),
        )
        .await?;
        let total = timer.start.elapsed();
        println!(
            "pulled {} ({}, {platform}): {} from the repository, {} fetched from the registry, {} already present, top snapshot {}; total {:.1} ms",
            pulled.name,
            pulled.manifest_digest,
            count_layers(pulled.remote_layers),
            pulled.fetched_layers,
            pulled.existing_layers,
            pulled.top_chain_id,
            total.as_secs_f64() * 1e3
        );
        Ok(())
    })
}

/// The connection to containerd under way while `pull` reads the image's metadata;
/// dropped (an error before it is needed) it is given up.
struct Connecting(tokio::task::JoinHandle<Result<Containerd>>);

impl Drop for Connecting {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Looks the directory of every layer of an image published in the repository up in the
/// mount at once, each on a thread of its own, without waiting: the snapshotter's
/// `Prepare` of each layer, which comes one after the other, looks the same directory up,
/// and finds the catalog loaded (or joins its download) instead of fetching the layers'
/// catalogs one round trip after another. Errors are for the `Prepare` to report. Plain
/// threads, not tokio's blocking pool: the process must not wait for them to end (a slow
/// mount would hold back the report of an error that came after).
fn look_up_layers_ahead(mountpoint: &std::path::Path, image: &Image) {
    let mount = RepositoryMount::new(mountpoint);
    for layer in &image.layers {
        let Ok(digest) = layer.digest.parse::<namespace::Digest>() else {
            continue;
        };
        let path = mount.layer_path(&digest);
        // A thread that cannot start only costs the look-ahead.
        let _ = std::thread::Builder::new()
            .name("layer-lookup".into())
            .spawn(move || std::fs::metadata(path).map(drop));
    }
}

/// `"1 layer"`, `"3 layers"`.
fn count_layers(n: usize) -> String {
    if n == 1 {
        "1 layer".to_string()
    } else {
        format!("{n} layers")
    }
}

/// Times the steps of a pull on stdout.
struct Timer {
    start: Instant,
    step: Instant,
}

impl Timer {
    fn new() -> Timer {
        let now = Instant::now();
        Timer {
            start: now,
            step: now,
        }
    }

    fn step(&mut self, what: &str) {
        let now = Instant::now();
        println!("{what}: {:.1} ms", (now - self.step).as_secs_f64() * 1e3);
        self.step = now;
    }
}

/// Fails unless `mountpoint` is a directory (the repository's mount point).
///
/// # Errors
/// [`Error::Io`] naming the mount point when it does not exist, cannot be reached (a dead
/// FUSE mount: `ENOTCONN`) or is not a directory.
fn check_mountpoint(mountpoint: &std::path::Path) -> Result<()> {
    let context = format!(
        "mount point {} (is the repository mounted there?)",
        mountpoint.display()
    );
    match std::fs::metadata(mountpoint) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(Error::Io {
            context,
            source: std::io::Error::from(std::io::ErrorKind::NotADirectory),
        }),
        Err(source) => Err(Error::Io { context, source }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_counts_read_as_english() {
        assert_eq!(count_layers(0), "0 layers");
        assert_eq!(count_layers(1), "1 layer");
        assert_eq!(count_layers(3), "3 layers");
    }

    #[test]
    fn mountpoint_must_be_an_existing_directory() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|source| Error::Io {
            context: "tempdir".into(),
            source,
        })?;
        check_mountpoint(dir.path())?;
        let missing = dir.path().join("cvmfs-typo");
        let err = check_mountpoint(&missing).err().map(|e| e.to_string());
        assert!(
            err.as_deref()
                .is_some_and(|e| e.contains("cvmfs-typo") && e.contains("No such file")),
            "{err:?}"
        );
        let file = dir.path().join("file");
        std::fs::write(&file, b"x").map_err(|source| Error::Io {
            context: "write".into(),
            source,
        })?;
        assert!(check_mountpoint(&file).is_err());
        Ok(())
    }
}
