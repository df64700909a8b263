//! The podman additional image store (`podmanStore/`, docs/namespace.md §10a) as the
//! publisher writes it: two names of one image are one record with both names; layer IDs,
//! short names, `lower` chains, `diff` links and big-data files are what containers-storage
//! reads; `remove` takes an image's record and unused layers out in its revision, and the
//! repository still verifies. (Real podman reads the store in the e2e test
//! `podman_runs_published_images_from_the_store_in_the_mount`.)

use std::path::Path;

use catalog::Suffix;
use namespace::{Digest, paths};
use publisher::podman_store::{ImageRecord, LayerRecord};
use publisher::publish::{Namespace, load_namespace};
use publisher::repo::Repo;

use crate::support::{mixed_layer, ok, run_ok, sha256_digest, verify_ok, write_layout};

const FQRN: &str = "podman.example.org";

fn json_file<T: serde::de::DeserializeOwned>(repo: &Repo, ns: &Namespace, path: &[&str]) -> T {
    let node = ns
        .root
        .get(path)
        .unwrap_or_else(|| panic!("no {}", paths::join(path)));
    let hash = node.entry.hash.unwrap_or_else(|| panic!("no hash"));
    let bytes = ok(publisher::objects::read_object(
        &repo.store,
        &hash,
        Suffix::None,
        1 << 20,
    ));
    ok(serde_json::from_slice(&bytes))
}

/// (layers.json, images.json) of the current revision.
pub(crate) fn store(dir: &Path) -> (Repo, Namespace, Vec<LayerRecord>, Vec<ImageRecord>) {
    let repo = ok(Repo::open(dir));
    let mut ns = ok(load_namespace(&repo));
    if let Some(node) = ns.root.get_mut(&[paths::PODMAN_STORE]) {
        ok(publisher::publish::load_catalog_node(&repo, node));
    }
    let [s, l] = paths::podman_layers_dir();
    let layers = json_file(&repo, &ns, &[s, l, paths::PODMAN_LAYERS_JSON]);
    let [s, i] = paths::podman_images_dir();
    let images = json_file(&repo, &ns, &[s, i, paths::PODMAN_IMAGES_JSON]);
    (repo, ns, layers, images)
}

/// Every name `podmanStore/overlay-images/images.json` lists, with its image ID.
pub(crate) fn podman_names(dir: &Path) -> std::collections::BTreeMap<String, String> {
    let (_, _, _, images) = store(dir);
    images
        .into_iter()
        .flat_map(|i| {
            let id = i.id.clone();
            i.names.into_iter().map(move |n| (n, id.clone()))
        })
        .collect()
}

#[test]
fn the_store_lists_published_images_and_drops_removed_ones() {
    let work = ok(tempfile::tempdir());
    let dir = work.path().join("repo");
    crate::support::init_repo(&dir, FQRN);
    let d = dir.display().to_string();
    let tars = [mixed_layer(301, 3, 500), mixed_layer(302, 2, 700)];
    let layout = work.path().join("oci");
    let image = write_layout(&layout, "t", &tars);
    let other_layout = work.path().join("other");
    let other = write_layout(&other_layout, "t", &[mixed_layer(303, 1, 100)]);
    let src = format!("oci:{}:t", layout.display());
    let other_src = format!("oci:{}:t", other_layout.display());
    run_ok(&["ingest", "--repo", &d, "--name", "a.test/x:1", &src]);
    run_ok(&["ingest", "--repo", &d, "--name", "a.test/y:2", &src]);
    run_ok(&["ingest", "--repo", &d, "--name", "b.test/z:3", &other_src]);

    let (repo, ns, layers, images) = store(&dir);
    let diff_ids: Vec<Digest> = tars.iter().map(|t| ok(sha256_digest(t).parse())).collect();
    let ids = paths::podman_layer_ids(&diff_ids);
    assert_eq!(layers.len(), 3, "{layers:?}");
    for (i, id) in ids.iter().enumerate() {
        let record = layers
            .iter()
            .find(|l| l.id == id.as_str())
            .unwrap_or_else(|| panic!("no layer {id}"));
        assert_eq!(record.compressed_digest, image.layers[i]);
        assert_eq!(record.diff_digest, diff_ids[i].to_string());
        assert_eq!(record.diff_size, Some(tars[i].len() as u64));
        assert_eq!(record.parent, i.checked_sub(1).map(|p| ids[p].to_string()));
        // overlay/<id>/{diff,link,lower} and l/<link>
        let layer_dir = paths::podman_layer_dir(id);
        let compressed: Digest = ok(image.layers[i].parse());
        let diff = ns
            .root
            .get(&[&layer_dir[..], &[paths::PODMAN_DIFF]].concat())
            .unwrap_or_else(|| panic!("no diff"));
        assert_eq!(
            diff.entry.symlink,
            paths::podman_diff_target(id, &compressed)
        );
        assert!(diff.entry.symlink.starts_with("../../../.layers/"));
        let link = paths::podman_link_name(id);
        let [s, o, l] = paths::podman_links_dir();
        let short = ns
            .root
            .get(&[s, o, l, link.as_str()])
            .unwrap_or_else(|| panic!("no l/{link}"));
        assert_eq!(short.entry.symlink, format!("../{id}/diff"));
        let lower = ns
            .root
            .get(&[&layer_dir[..], &[paths::PODMAN_LOWER]].concat());
        assert_eq!(lower.is_some(), i > 0, "lower file of layer {i}");
    }
    let x = images
        .iter()
        .find(|i| i.names.contains(&"a.test/x:1".to_string()))
        .unwrap_or_else(|| panic!("{images:?}"));
    let config: Digest = ok(image.config.parse());
    assert_eq!(x.id, config.hex().as_str());
    assert_eq!(x.names, vec!["a.test/x:1", "a.test/y:2"]);
    assert_eq!(x.layer, ids[1].as_str());
    assert!(x.big_data_names.contains(&image.config));
    assert!(x.big_data_names.contains(&"manifest".to_string()));
    // Big data shares the .metadata objects.
    let manifest = ns
        .root
        .get(&[".metadata", "a.test", "x:1", "manifest.json"])
        .and_then(|n| n.entry.hash);
    let image_dir = paths::podman_image_dir(&config);
    let stored = ns
        .root
        .get(&[&image_dir[..], &["manifest"]].concat())
        .and_then(|n| n.entry.hash);
    assert!(manifest.is_some() && manifest == stored);
    let key = paths::podman_big_data_name(&image.config);
    assert!(
        ns.root
            .get(&[&image_dir[..], &[key.as_str()]].concat())
            .is_some(),
        "no config file {key}"
    );
    drop((repo, ns));

    // One name gone: the record keeps the other; both gone: the image and its layers go.
    run_ok(&["remove", "--repo", &d, "a.test/x:1"]);
    let (_, _, layers, images) = store(&dir);
    assert_eq!(layers.len(), 3);
    let names: Vec<&Vec<String>> = images.iter().map(|i| &i.names).collect();
    assert!(
        names.contains(&&vec!["a.test/y:2".to_string()]),
        "{names:?}"
    );
    run_ok(&["remove", "--repo", &d, "a.test/y:2"]);
    let (_, ns, layers, images) = store(&dir);
    assert_eq!(images.len(), 1);
    assert_eq!(images[0].names, vec!["b.test/z:3"]);
    assert_eq!(layers.len(), 1);
    assert_eq!(layers[0].compressed_digest, other.layers[0]);
    assert!(ns.root.get(&paths::podman_layer_dir(&ids[0])).is_none());
    assert!(ns.root.get(&[".metadata", "a.test"]).is_none());
    verify_ok(&dir);

    // A name that is not published: refused, nothing changes.
    let out = crate::support::run(&["remove", "--repo", &d, "a.test/x:1"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not published"));
}
