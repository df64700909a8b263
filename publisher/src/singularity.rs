//! `/.singularity.d/` of a flat image, made from the image config the way Apptainer's
//! docker bootstrap makes it (apptainer `internal/pkg/build/sources/conveyorPacker_oci.go`):
//! `env/10-docker2singularity.sh` exports `Env`, `runscript` runs `Entrypoint` + `Cmd` as
//! `docker run` does (arguments replace `Cmd`) after changing to `WorkingDir`, and
//! `labels.json` holds `Labels`. `apptainer exec|run <M>/<registry>/<repo>:<tag>` then
//! behave like `docker run`. An image that already has `/.singularity.d` keeps its own.

use std::collections::BTreeMap;

use catalog::{LocalStore, Suffix};
use serde::Deserialize;

use crate::error::{Error, Result};
use crate::tree::{Node, dir_entry, file_entry};

/// The directory name at the image root.
pub const SINGULARITY_DIR: &str = ".singularity.d";

#[derive(Deserialize, Default)]
struct ImageConfig {
    #[serde(default)]
    config: Option<RunConfig>,
}

/// The `config` object of an OCI/Docker image config (OCI image spec, "Properties").
#[derive(Deserialize, Default, Clone, Debug, PartialEq)]
pub struct RunConfig {
    /// `KEY=value` strings.
    #[serde(rename = "Env", default)]
    pub env: Option<Vec<String>>,
    /// The entrypoint argv.
    #[serde(rename = "Entrypoint", default)]
    pub entrypoint: Option<Vec<String>>,
    /// Default arguments (or command, without entrypoint).
    #[serde(rename = "Cmd", default)]
    pub cmd: Option<Vec<String>>,
    /// Working directory of the process.
    #[serde(rename = "WorkingDir", default)]
    pub working_dir: Option<String>,
    /// Image labels.
    #[serde(rename = "Labels", default)]
    pub labels: Option<BTreeMap<String, String>>,
}

impl RunConfig {
    /// The `config` object of the image config bytes (absent → empty). Errors with
    /// [`Error::Json`] if the bytes are not a JSON image config.
    pub fn from_image_config(bytes: &[u8]) -> Result<RunConfig> {
        let c: ImageConfig = serde_json::from_slice(bytes)
            .map_err(|e| Error::json("parsing image config for .singularity.d", e))?;
        Ok(c.config.unwrap_or_default())
    }
}

/// `'text'` for sh, with `'` written as `'\''`.
fn single_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// `text` escaped for use inside sh double quotes (`\`, `"`, `$`, `` ` ``).
fn double_quote_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '\\' | '"' | '$' | '`') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Whether `name` is a POSIX shell variable name.
fn is_shell_name(name: &str) -> bool {
    let mut b = name.bytes();
    b.next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == b'_')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_')
}

/// `env/10-docker2singularity.sh`: `PATH` is set as the image says; every other variable
/// keeps a value the caller already set, as Apptainer's generated file does.
pub fn docker_env_script(cfg: &RunConfig) -> String {
    let mut s = String::from("#!/bin/sh\n");
    for kv in cfg.env.iter().flatten() {
        let (key, value) = kv.split_once('=').unwrap_or((kv, ""));
        if !is_shell_name(key) {
            tracing::warn!(
                variable = key,
                "skipping Env entry that is not a shell name"
            );
            continue;
        }
        let v = double_quote_escape(value);
        if key == "PATH" {
            s.push_str(&format!("export {key}=\"{v}\"\n"));
        } else {
            s.push_str(&format!("export {key}=\"${{{key}:-\"{v}\"}}\"\n"));
        }
    }
    s
}

/// `runscript`: `Entrypoint` followed by the arguments, or by `Cmd` when there are none;
/// without an `Entrypoint` the arguments replace `Cmd` (docker run semantics).
pub fn runscript(cfg: &RunConfig) -> String {
    let words = |v: &Option<Vec<String>>| -> String {
        v.iter()
            .flatten()
            .map(|a| format!("\"{}\"", double_quote_escape(a)))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let mut s = String::from(
        "#!/bin/sh\n# Made by strata-publisher from the image config (Entrypoint, Cmd, WorkingDir).\n",
    );
    s.push_str(&format!(
        "OCI_ENTRYPOINT={}\n",
        single_quote(&words(&cfg.entrypoint))
    ));
    s.push_str(&format!("OCI_CMD={}\n", single_quote(&words(&cfg.cmd))));
    if let Some(dir) = cfg.working_dir.as_deref().filter(|d| !d.is_empty()) {
        let q = single_quote(dir);
        s.push_str(&format!("if [ -d {q} ]; then cd {q}; fi\n"));
    }
    s.push_str(
        r#"if [ $# -gt 0 ]; then
    eval "set -- ${OCI_ENTRYPOINT} \"\$@\""
else
    eval "set -- ${OCI_ENTRYPOINT} ${OCI_CMD}"
fi
if [ $# -eq 0 ]; then
    echo "runscript: the image has neither Entrypoint nor Cmd; give a command" >&2
    exit 1
fi
exec "$@"
"#,
    );
    s
}

/// `labels.json`: the image labels as a JSON object.
pub fn labels_json(cfg: &RunConfig) -> Vec<u8> {
    let labels = cfg.labels.clone().unwrap_or_default();
    let mut v = serde_json::to_vec_pretty(&labels).unwrap_or_else(|_| b"{}".to_vec());
    v.push(b'\n');
    v
}

/// The files of `/.singularity.d` as (relative path, mode, bytes).
pub fn files(cfg: &RunConfig) -> Vec<(&'static str, u32, Vec<u8>)> {
    vec![
        ("env/01-base.sh", 0o755, b"#!/bin/sh\n#\n".to_vec()),
        ("env/10-docker2singularity.sh", 0o755, docker_env_script(cfg).into_bytes()),
        (
            "env/90-environment.sh",
            0o755,
            b"#!/bin/sh\n# Custom environment shell code should follow\n".to_vec(),
        ),
        (
            "env/99-base.sh",
            0o755,
            b"#!/bin/sh\nif [ -z \"${LD_LIBRARY_PATH:-}\" ]; then\n    LD_LIBRARY_PATH=\"/.singularity.d/libs\"\nelse\n    LD_LIBRARY_PATH=\"$LD_LIBRARY_PATH:/.singularity.d/libs\"\nfi\nPS1=\"Apptainer> \"\nexport LD_LIBRARY_PATH PS1\n".to_vec(),
        ),
        ("runscript", 0o755, runscript(cfg).into_bytes()),
        ("labels.json", 0o644, labels_json(cfg)),
    ]
}

/// Adds `/.singularity.d` (with an empty `libs/`) to the flat root `flat`, storing its
/// files in `store`; files get `mtime` (callers pass the image root's, so that equal images
/// give equal trees) and root ownership. No-op when the image has one.
pub fn add_to_flat(store: &LocalStore, flat: &mut Node, config: &[u8], mtime: i64) -> Result<()> {
    if flat.children.contains_key(SINGULARITY_DIR) {
        return Ok(());
    }
    let dir = dir_node(store, config, mtime)?;
    flat.children.insert(SINGULARITY_DIR.to_string(), dir);
    flat.fix_linkcounts();
    Ok(())
}

/// The `/.singularity.d` directory for the image config `config` (files stored in
/// `store`, everything owned by root with mtime `mtime`), as [`add_to_flat`] adds it; link
/// counts are not set yet.
///
/// Errors: [`Error::Json`] for a config that is not JSON, store errors.
pub fn dir_node(store: &LocalStore, config: &[u8], mtime: i64) -> Result<Node> {
    let cfg = RunConfig::from_image_config(config)?;
    let mut dir = Node::leaf(dir_entry(SINGULARITY_DIR, 0o755, 0, 0, mtime));
    for sub in ["env", "libs"] {
        dir.insert(&[], Node::leaf(dir_entry(sub, 0o755, 0, 0, mtime)), mtime);
    }
    for (path, mode, bytes) in files(&cfg) {
        let hash = store.put_raw(&bytes, Suffix::None)?;
        let (parent, name) = path.rsplit_once('/').unwrap_or(("", path));
        let parents: Vec<&str> = parent.split('/').filter(|c| !c.is_empty()).collect();
        let e = file_entry(name, mode, 0, 0, mtime, bytes.len() as u64, hash);
        dir.insert(&parents, Node::leaf(e), mtime);
    }
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::*;

    fn cfg(json: &str) -> RunConfig {
        RunConfig::from_image_config(json.as_bytes()).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Runs `script` with /bin/sh and `args`; returns stdout.
    fn run_sh(script: &str, args: &[&str]) -> (bool, String) {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let file = dir.path().join("s");
        std::fs::write(&file, script).unwrap_or_else(|e| panic!("{e}"));
        let out = Command::new("/bin/sh")
            .arg(&file)
            .args(args)
            .current_dir("/")
            .output()
            .unwrap_or_else(|e| panic!("{e}"));
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }

    #[test]
    fn runscript_follows_docker_run() {
        let both = cfg(
            r#"{"config":{"Entrypoint":["/usr/bin/printf","[%s]"],"Cmd":["a b","$HOME","it's"],
            "WorkingDir":"/tmp"}}"#,
        );
        let rs = runscript(&both);
        assert_eq!(run_sh(&rs, &[]), (true, "[a b][$HOME][it's]".into()));
        assert_eq!(
            run_sh(&rs, &["x", "\"y\" `z`"]),
            (true, "[x][\"y\" `z`]".into())
        );
        // WorkingDir is entered before the command runs
        let pwd = cfg(r#"{"config":{"Cmd":["/bin/pwd"],"WorkingDir":"/tmp"}}"#);
        assert_eq!(run_sh(&runscript(&pwd), &[]), (true, "/tmp\n".into()));
        // Cmd only: arguments replace it
        let cmd = cfg(r#"{"config":{"Cmd":["/bin/echo","default"]}}"#);
        assert_eq!(run_sh(&runscript(&cmd), &[]), (true, "default\n".into()));
        assert_eq!(
            run_sh(&runscript(&cmd), &["/bin/echo", "given"]),
            (true, "given\n".into())
        );
        // neither: fails unless a command is given
        let none = cfg(r#"{"config":{}}"#);
        assert!(!run_sh(&runscript(&none), &[]).0);
        assert_eq!(
            run_sh(&runscript(&none), &["/bin/echo", "ok"]),
            (true, "ok\n".into())
        );
        assert_eq!(cfg(r#"{"architecture":"amd64"}"#), RunConfig::default());
    }

    #[test]
    fn env_script_exports_image_env() {
        let c = cfg(
            r#"{"config":{"Env":["PATH=/opt/bin:/usr/bin","FOO=a \"b\" $c `d` \\e","EMPTY=","NOEQ","bad-name=x"]}}"#,
        );
        let script = docker_env_script(&c);
        assert!(
            script.contains("export PATH=\"/opt/bin:/usr/bin\"\n"),
            "{script}"
        );
        assert!(!script.contains("bad-name"));
        let probe = format!(
            "{script}printf '%s|%s|%s|%s' \"$PATH\" \"$FOO\" \"$EMPTY\" \"${{NOEQ-unset}}\"\n"
        );
        assert_eq!(
            run_sh(&probe, &[]),
            (true, "/opt/bin:/usr/bin|a \"b\" $c `d` \\e||".into())
        );
        // a value set by the caller wins (Apptainer's rule), PATH does not
        let keep = format!("FOO=mine\n{script}printf %s \"$FOO\"\n");
        assert_eq!(run_sh(&keep, &[]), (true, "mine".into()));
    }

    #[test]
    fn flat_gets_singularity_dir_once() {
        let store_dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let store = LocalStore::open(store_dir.path()).unwrap_or_else(|e| panic!("{e}"));
        let mut flat = Node::dir("", 0o755, 0);
        let config = br#"{"config":{"Cmd":["sh"],"Labels":{"org.x":"1"}}}"#;
        add_to_flat(&store, &mut flat, config, 7).unwrap_or_else(|e| panic!("{e}"));
        let rs = flat
            .get(&[SINGULARITY_DIR, "runscript"])
            .unwrap_or_else(|| panic!("no runscript"));
        assert_eq!((rs.entry.mode, rs.entry.mtime), (0o100755, 7));
        let labels = flat
            .get(&[SINGULARITY_DIR, "labels.json"])
            .and_then(|n| n.entry.hash)
            .unwrap_or_else(|| panic!("no labels"));
        let bytes = crate::objects::read_object(&store, &labels, Suffix::None, 1 << 20)
            .unwrap_or_else(|e| panic!("{e}"));
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(v["org.x"], "1");
        assert!(
            flat.get(&[SINGULARITY_DIR, "libs"])
                .is_some_and(Node::is_dir)
        );
        assert!(
            flat.get(&[SINGULARITY_DIR, "env", "10-docker2singularity.sh"])
                .is_some()
        );
        assert_eq!(flat.entry.linkcount, 3);
        // an image's own .singularity.d is kept
        let mut own = Node::dir("", 0o755, 0);
        own.ensure_dir(&[SINGULARITY_DIR], 0);
        add_to_flat(&store, &mut own, config, 7).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(own.count(), 1);
    }
}
