//! Debian's `docker-registry` (distribution 2.x) on 127.0.0.1, with its own config and an
//! access log the tests read.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::error::{Result, io_context};
use crate::net::{free_addr, http_get};
use crate::process::Service;

/// One request of the registry's access log (Apache combined format, which distribution
/// writes to stdout unless `log.accesslog.disabled`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessLine {
    /// `GET`, `HEAD`, `PUT`, …
    pub method: String,
    /// Request path, e.g. `/v2/demo/blobs/sha256:…`.
    pub path: String,
    /// HTTP status code.
    pub status: u16,
}

/// A running registry; stopped on drop.
#[derive(Debug)]
pub struct Registry {
    service: Service,
    addr: SocketAddr,
}

impl Registry {
    /// Writes `dir/config.yml` (listen on a free 127.0.0.1 port, filesystem storage in
    /// `dir/storage`, access log on), starts `docker-registry serve` logging to `log`, and
    /// waits until `GET /v2/` answers 200 (30 s at most).
    pub fn start(dir: &Path, log: &Path) -> Result<Registry> {
        let addr = free_addr()?;
        let config = dir.join("config.yml");
        let storage = dir.join("storage");
        std::fs::create_dir_all(&storage)
            .map_err(io_context(format!("create {}", storage.display())))?;
        std::fs::write(&config, config_yml(addr, &storage))
            .map_err(io_context(format!("write {}", config.display())))?;
        let mut command = Command::new("docker-registry");
        command.arg("serve").arg(&config);
        let mut service = Service::spawn("docker-registry", command, log)?;
        service.wait_ready(
            &format!("registry on {addr}"),
            Duration::from_secs(30),
            || {
                Ok(http_get(addr, "/v2/")
                    .map(|r| r.status == 200)
                    .unwrap_or(false))
            },
        )?;
        Ok(Registry { service, addr })
    }

    /// `skopeo copy --dest-tls-verify=false SOURCE docker://REFERENCE`: pushes the image
    /// `source` (e.g. `oci:DIR:TAG`) as `reference` (`<this host>/REPO:TAG`), timed.
    ///
    /// Errors: skopeo failing (with its log tail) or taking longer than 20 minutes.
    pub fn push(&self, source: &str, reference: &str, log: &Path) -> Result<crate::measure::Timed> {
        crate::measure::run_timed(
            Command::new("skopeo").args([
                "copy",
                "--dest-tls-verify=false",
                source,
                &format!("docker://{reference}"),
            ]),
            log,
            Duration::from_secs(20 * 60),
        )
    }

    /// `127.0.0.1:PORT`, the registry part of image references.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The log holding the access log (stdout) and the application log (stderr).
    pub fn log(&self) -> &Path {
        self.service.log()
    }

    /// Every request logged so far, in order.
    pub fn access_log(&self) -> Result<Vec<AccessLine>> {
        let text = std::fs::read_to_string(self.log())
            .map_err(io_context(format!("read {}", self.log().display())))?;
        Ok(text.lines().filter_map(parse_access_line).collect())
    }

    /// How many `GET /v2/<repository>/blobs/…` requests (layers and configs) were logged.
    pub fn blob_gets(&self, repository: &str) -> Result<usize> {
        let prefix = format!("/v2/{repository}/blobs/");
        Ok(self
            .access_log()?
            .iter()
            .filter(|l| l.method == "GET" && l.path.starts_with(&prefix))
            .count())
    }

    /// How many `GET /v2/<repository>/blobs/<digest>` requests were logged for the blobs
    /// `digests` (e.g. an image's layers).
    pub fn blob_gets_of(&self, repository: &str, digests: &[&str]) -> Result<usize> {
        let wanted: Vec<String> = digests
            .iter()
            .map(|d| format!("/v2/{repository}/blobs/{d}"))
            .collect();
        Ok(self
            .access_log()?
            .iter()
            .filter(|l| l.method == "GET" && wanted.contains(&l.path))
            .count())
    }

    /// Stops the registry now (also done on drop).
    pub fn stop(&mut self) {
        self.service.stop(Duration::from_secs(5));
    }
}

fn config_yml(addr: SocketAddr, storage: &Path) -> String {
    format!(
        "version: 0.1\n\
         log:\n  level: info\n  accesslog:\n    disabled: false\n\
         storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
         http:\n  addr: {addr}\n",
        storage.display()
    )
}

/// Parses `127.0.0.1 - - [date] "GET /v2/ HTTP/1.1" 200 2 "" "agent"`.
fn parse_access_line(line: &str) -> Option<AccessLine> {
    let (_, rest) = line.split_once(" \"")?;
    let (request, rest) = rest.split_once('"')?;
    let mut parts = request.split(' ');
    let method = parts.next()?.to_owned();
    let path = parts.next()?.to_owned();
    if !parts.next()?.starts_with("HTTP/") {
        return None;
    }
    let status = rest.split_whitespace().next()?.parse().ok()?;
    Some(AccessLine {
        method,
        path,
        status,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_combined_log_lines_and_ignores_others() {
        let line = "127.0.0.1 - - [29/Nov/2026:09:11:11 +0000] \"GET /v2/demo/blobs/sha256:ab HTTP/1.1\" 200 2 \"\" \"skopeo/1.9.3\"";
        assert_eq!(
            parse_access_line(line),
            Some(AccessLine {
                method: "GET".into(),
                path: "/v2/demo/blobs/sha256:ab".into(),
                status: 200
            })
        );
        let app = "time=\"2026\" level=error msg=\"response completed with error\" http.request.method=HEAD";
        assert_eq!(parse_access_line(app), None);
    }

    #[test]
    fn config_names_address_and_storage() {
        let yml = config_yml(
            SocketAddr::from(([127, 0, 0, 1], 5555)),
            Path::new("/x/storage"),
        );
        assert!(yml.contains("addr: 127.0.0.1:5555"));
        assert!(yml.contains("rootdirectory: /x/storage"));
        assert!(yml.contains("disabled: false"));
    }
}
