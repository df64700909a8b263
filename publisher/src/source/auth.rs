//! Registry credentials: `--username/--password`, or a docker `config.json`
//! (`--authfile`, else `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`) whose
//! `auths.<registry>.auth` is base64 `user:password` (docker CLI `cli/config/configfile`).
//! Credential helpers (`credsStore`, `credHelpers`) are not run.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use base64::Engine;
use serde::Deserialize;

use crate::error::{Error, Result};
use crate::reference::{DEFAULT_REGISTRY, DOCKER_HUB_ALIASES};

/// A user name and password (or token) for HTTP basic auth or the bearer-token exchange.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// User name.
    pub username: String,
    /// Password or access token.
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({}, ***)", self.username)
    }
}

#[derive(Deserialize)]
struct ConfigFile {
    #[serde(default)]
    auths: HashMap<String, AuthEntry>,
}

#[derive(Deserialize)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
}

/// The host[:port] an `auths` key names: scheme and path stripped; Docker Hub's aliases
/// ([`DOCKER_HUB_ALIASES`], e.g. `https://index.docker.io/v1/`) become `docker.io`.
fn key_host(key: &str) -> String {
    let rest = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let host = rest.split('/').next().unwrap_or_default();
    if DOCKER_HUB_ALIASES.contains(&host) {
        DEFAULT_REGISTRY.to_string()
    } else {
        host.to_string()
    }
}

/// The credentials `config` (the bytes of a docker `config.json`) holds for `registry`
/// (`host[:port]`, `docker.io` for Docker Hub). Errors with [`Error::Json`] if the file is
/// not JSON and [`Error::Reference`] if an `auth` value is not base64 `user:password`.
pub fn from_docker_config(config: &[u8], registry: &str) -> Result<Option<Credentials>> {
    let file: ConfigFile =
        serde_json::from_slice(config).map_err(|e| Error::json("parsing docker config.json", e))?;
    let Some(entry) = file
        .auths
        .iter()
        .find(|(k, _)| key_host(k) == registry)
        .map(|(_, v)| v)
    else {
        return Ok(None);
    };
    let bad = |reason: &str| Error::Reference {
        reference: registry.to_string(),
        reason: format!("docker config.json auths entry: {reason}"),
    };
    if let Some(auth) = entry.auth.as_deref().filter(|a| !a.is_empty()) {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(auth.trim())
            .map_err(|_| bad("auth is not base64"))?;
        let text = String::from_utf8(decoded).map_err(|_| bad("auth is not UTF-8"))?;
        let (user, pass) = text
            .split_once(':')
            .ok_or_else(|| bad("auth is not user:password"))?;
        return Ok(Some(Credentials {
            username: user.to_string(),
            password: pass.to_string(),
        }));
    }
    match (&entry.username, &entry.password) {
        (Some(u), Some(p)) => Ok(Some(Credentials {
            username: u.clone(),
            password: p.clone(),
        })),
        _ => Ok(None),
    }
}

/// The docker config file to read: `authfile` if given, else `$DOCKER_CONFIG/config.json`,
/// else `$HOME/.docker/config.json`.
pub fn config_path(authfile: Option<&Path>) -> Option<PathBuf> {
    if let Some(p) = authfile {
        return Some(p.to_path_buf());
    }
    if let Some(d) = std::env::var_os("DOCKER_CONFIG") {
        return Some(PathBuf::from(d).join("config.json"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker/config.json"))
}

/// Credentials for `registry`: `explicit` if given, else from the config file
/// ([`config_path`]); a missing default config file means anonymous, a missing `authfile`
/// is an error.
pub fn credentials_for(
    registry: &str,
    explicit: Option<&Credentials>,
    authfile: Option<&Path>,
) -> Result<Option<Credentials>> {
    if let Some(c) = explicit {
        return Ok(Some(c.clone()));
    }
    let Some(path) = config_path(authfile) else {
        return Ok(None);
    };
    match std::fs::read(&path) {
        Ok(bytes) => from_docker_config(&bytes, registry),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && authfile.is_none() => Ok(None),
        Err(e) => Err(Error::io(format!("read {}", path.display()), e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_config_auths() {
        let cfg = br#"{"auths":{
            "https://index.docker.io/v1/":{"auth":"aHViOnNlY3JldA=="},
            "registry.example.org:5000":{"auth":"dTpwOndpdGg6Y29sb25z"},
            "http://plain.example":{"username":"x","password":"y"}},
            "credsStore":"desktop"}"#;
        let c = |r: &str| from_docker_config(cfg, r).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            c("docker.io"),
            Some(Credentials {
                username: "hub".into(),
                password: "secret".into()
            })
        );
        let r = c("registry.example.org:5000").unwrap_or_else(|| panic!("missing"));
        assert_eq!(
            (r.username.as_str(), r.password.as_str()),
            ("u", "p:with:colons")
        );
        assert_eq!(c("plain.example").map(|c| c.username), Some("x".into()));
        assert_eq!(c("other.example"), None);
        assert!(format!("{:?}", c("docker.io")).contains("***"));
        assert!(from_docker_config(br#"{"auths":{"a":{"auth":"!!"}}}"#, "a").is_err());
        assert!(from_docker_config(b"nope", "a").is_err());
    }

    #[test]
    fn explicit_and_file_lookup() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let file = dir.path().join("auth.json");
        std::fs::write(&file, br#"{"auths":{"r.example":{"auth":"YTpi"}}}"#)
            .unwrap_or_else(|e| panic!("{e}"));
        let got = credentials_for("r.example", None, Some(&file)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(got.map(|c| c.password), Some("b".into()));
        let explicit = Credentials {
            username: "me".into(),
            password: "pw".into(),
        };
        let got = credentials_for("r.example", Some(&explicit), Some(&file))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(got, Some(explicit));
        assert!(credentials_for("r.example", None, Some(&dir.path().join("none"))).is_err());
    }
}
