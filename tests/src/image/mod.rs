//! The test image: real Debian packages in three layers, built once per machine and cached.
//!
//! | layer | made by | content |
//! |---|---|---|
//! | 1 | `debootstrap --variant=minbase bookworm` | Debian minbase, plus `/etc/strata-opaque/{lower-a,lower-b}.txt` |
//! | 2 | `apt-get install python3` in a chroot | the Python 3 interpreter and standard library |
//! | 3 | a hand-made tarball ([`layer_tar`]) | deletes [`DELETED_FILE`] and [`DELETED_DIR`], replaces [`OPAQUE_DIR`] opaquely by one file |
//!
//! The OCI layout is cached in `<target>/strata-test-images/<IMAGE_KEY>/oci` (tag
//! [`IMAGE_TAG`]); a lock file serialises concurrent builders (parallel tests, the demo).

pub mod apt;
pub mod build;
pub mod corpus;
pub mod layer_tar;
pub mod layout;
pub mod rich;
pub mod umoci;

pub use apt::{AptRecipe, GCC, PYANA, apt_image};
pub use build::{TestImage, build_escaping_layout, test_image};
pub use layout::{
    ImageFacts, LayerFacts, LayoutImage, gzip, put_blob, read_layout, sha256_digest, sha256_file,
    write_layout, write_layout_with,
};
pub use rich::{RICH_KEY, RICH_TAG, rich_image};

/// Cache key of the image recipe; change it whenever the recipe changes.
pub const IMAGE_KEY: &str = "bookworm-minbase-python3-v1";
/// Tag of the finished image inside the cached layout.
pub const IMAGE_TAG: &str = "demo";
/// A regular file of layer 1 that layer 3 deletes (`etc/.wh.issue.net`).
pub const DELETED_FILE: &str = "/etc/issue.net";
/// A directory of layer 2 (python3's documentation) that layer 3 deletes.
pub const DELETED_DIR: &str = "/usr/share/doc/python3";
/// A directory with [`OPAQUE_LOWER_FILES`] in layer 1 that layer 3 replaces opaquely.
pub const OPAQUE_DIR: &str = "/etc/strata-opaque";
/// The files layer 1 puts in [`OPAQUE_DIR`]; hidden in the final image.
pub const OPAQUE_LOWER_FILES: &[&str] = &["lower-a.txt", "lower-b.txt"];
/// The only file of [`OPAQUE_DIR`] in the final image, and its content.
pub const OPAQUE_UPPER_FILE: (&str, &[u8]) = ("upper.txt", b"from layer 3\n");
