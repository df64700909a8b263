//! HTTP proxy chains (Squid) in `CVMFS_HTTP_PROXY` syntax and the fail-over order of
//! proxies and hosts (docs/format.md §8.8.2, §8.8.3, §8.8.5), used by [`crate::client::fetch`].
//!
//! A chain is a list of **groups** separated by `;`, tried in order (fail-over); the
//! proxies of a group are separated by `|` and load-balanced (one picked at random per
//! request). `DIRECT` means no proxy. Entries without a scheme get `http://`.
//! Example: `http://squid1:3128|http://squid2:3128;http://backup:3128;DIRECT`.
//!
//! [`Health`] remembers when a proxy or host last failed. A failed one is tried only after
//! the healthy ones, until `reset_after` has passed since its failure (the analogue of
//! `CVMFS_PROXY_RESET_AFTER` / `CVMFS_HOST_RESET_AFTER`); then it is probed again in its
//! normal place.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::{Error, Result};

/// One hop: a proxy URL or a direct connection.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Proxy {
    /// Connect to the server without a proxy (`DIRECT`).
    Direct,
    /// An HTTP proxy, e.g. `http://squid1:3128`.
    Url(String),
}

impl std::fmt::Display for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Proxy::Direct => f.write_str("DIRECT"),
            Proxy::Url(u) => f.write_str(u),
        }
    }
}

/// A parsed `CVMFS_HTTP_PROXY` value: groups of load-balanced proxies, in fail-over order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxyChain {
    /// The groups, in order; each non-empty.
    pub groups: Vec<Vec<Proxy>>,
}

impl ProxyChain {
    /// Parses `CVMFS_HTTP_PROXY` syntax (docs/format.md §8.8.2). Blank entries are ignored; `DIRECT`
    /// is matched case-insensitively; `auto` (WPAD) is not supported.
    ///
    /// # Errors
    /// [`Error::Config`] for an empty chain, `auto`, or a proxy URL that is not `http://`.
    pub fn parse(text: &str) -> Result<ProxyChain> {
        let mut groups = Vec::new();
        for group in text.split(';') {
            let mut members = Vec::new();
            for item in group.split('|').map(str::trim).filter(|s| !s.is_empty()) {
                if item.eq_ignore_ascii_case("DIRECT") {
                    members.push(Proxy::Direct);
                } else if item.eq_ignore_ascii_case("auto") {
                    return Err(Error::Config(
                        "proxy auto-discovery (WPAD, `auto`) is not supported".into(),
                    ));
                } else {
                    let url = if item.contains("://") {
                        item.to_string()
                    } else {
                        format!("http://{item}")
                    };
                    if !url.starts_with("http://") {
                        return Err(Error::Config(format!(
                            "proxy {url:?}: only http:// proxies are supported"
                        )));
                    }
                    members.push(Proxy::Url(url.trim_end_matches('/').to_string()));
                }
            }
            if !members.is_empty() {
                groups.push(members);
            }
        }
        if groups.is_empty() {
            return Err(Error::Config(
                "the proxy chain is empty; use DIRECT for no proxy (docs/format.md §8.8.2)".into(),
            ));
        }
        Ok(ProxyChain { groups })
    }

    /// Every distinct proxy of the chain, in chain order.
    pub fn distinct(&self) -> Vec<Proxy> {
        let mut out: Vec<Proxy> = Vec::new();
        for p in self.groups.iter().flatten() {
            if !out.contains(p) {
                out.push(p.clone());
            }
        }
        out
    }
}

impl std::fmt::Display for ProxyChain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let groups: Vec<String> = self
            .groups
            .iter()
            .map(|g| g.iter().map(Proxy::to_string).collect::<Vec<_>>().join("|"))
            .collect();
        f.write_str(&groups.join(";"))
    }
}

/// Failure marks of `n` items (proxies or hosts) with a reset time.
pub struct Health {
    failed_at: Mutex<Vec<Option<Instant>>>,
    reset_after: Duration,
}

impl Health {
    /// `n` healthy items; a failed item counts as healthy again `reset_after` after it failed.
    pub fn new(n: usize, reset_after: Duration) -> Health {
        Health {
            failed_at: Mutex::new(vec![None; n]),
            reset_after,
        }
    }

    /// Marks item `i` failed now.
    pub fn mark_failed(&self, i: usize) {
        if let Some(slot) = self.lock().get_mut(i) {
            *slot = Some(Instant::now());
        }
    }

    /// Marks item `i` healthy (it just answered).
    pub fn mark_ok(&self, i: usize) {
        if let Some(slot) = self.lock().get_mut(i) {
            *slot = None;
        }
    }

    /// Whether item `i` failed less than `reset_after` ago.
    pub fn is_failed(&self, i: usize) -> bool {
        self.lock()
            .get(i)
            .copied()
            .flatten()
            .is_some_and(|t| t.elapsed() < self.reset_after)
    }

    /// `order` with the currently failed items moved to the end (stable otherwise): healthy
    /// items are tried first, failed ones only as a last resort.
    pub fn healthy_first(&self, order: Vec<usize>) -> Vec<usize> {
        let (mut healthy, failed): (Vec<usize>, Vec<usize>) =
            order.into_iter().partition(|&i| !self.is_failed(i));
        healthy.extend(failed);
        healthy
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Option<Instant>>> {
        self.failed_at
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The order in which one request tries the proxies of `chain` (indices into
/// [`ProxyChain::distinct`]): group by group; inside a group the members in random order
/// (load balancing); then failed proxies are moved behind healthy ones by `health`. Each
/// distinct proxy appears once.
pub fn proxy_order(chain: &ProxyChain, distinct: &[Proxy], health: &Health) -> Vec<usize> {
    let mut order = Vec::new();
    for group in &chain.groups {
        let mut members: Vec<usize> = group
            .iter()
            .filter_map(|p| distinct.iter().position(|d| d == p))
            .collect();
        // Fisher–Yates shuffle.
        for i in (1..members.len()).rev() {
            let j = rand::random_range(0..=i);
            members.swap(i, j);
        }
        for m in members {
            if !order.contains(&m) {
                order.push(m);
            }
        }
    }
    health.healthy_first(order)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_groups_members_direct_and_bare_hosts() {
        let c = ProxyChain::parse("http://s1:3128|s2:3128; http://backup:3128/ ;DIRECT").unwrap();
        assert_eq!(
            c.groups,
            vec![
                vec![
                    Proxy::Url("http://s1:3128".into()),
                    Proxy::Url("http://s2:3128".into())
                ],
                vec![Proxy::Url("http://backup:3128".into())],
                vec![Proxy::Direct],
            ]
        );
        assert_eq!(
            c.to_string(),
            "http://s1:3128|http://s2:3128;http://backup:3128;DIRECT"
        );
        assert_eq!(
            ProxyChain::parse("direct").unwrap().groups,
            vec![vec![Proxy::Direct]]
        );
        assert!(matches!(ProxyChain::parse(" ; | "), Err(Error::Config(_))));
        assert!(matches!(
            ProxyChain::parse("auto;DIRECT"),
            Err(Error::Config(_))
        ));
        assert!(matches!(
            ProxyChain::parse("https://p:1"),
            Err(Error::Config(_))
        ));
    }

    #[test]
    fn order_is_group_by_group_random_inside_and_failed_last() {
        let c = ProxyChain::parse("a:1|b:1|c:1;d:1;DIRECT").unwrap();
        let d = c.distinct();
        assert_eq!(d.len(), 5);
        let health = Health::new(d.len(), Duration::from_secs(300));
        let mut firsts = std::collections::HashSet::new();
        for _ in 0..200 {
            let o = proxy_order(&c, &d, &health);
            assert_eq!(o.len(), 5);
            let mut head: Vec<usize> = o[..3].to_vec();
            head.sort();
            assert_eq!(head, vec![0, 1, 2]);
            assert_eq!(&o[3..], &[3, 4]);
            firsts.insert(o[0]);
        }
        assert_eq!(
            firsts.len(),
            3,
            "load balancing never picked some member first"
        );

        health.mark_failed(0);
        health.mark_failed(1);
        health.mark_failed(2);
        let o = proxy_order(&c, &d, &health);
        assert_eq!(&o[..2], &[3, 4]);
        health.mark_ok(1);
        assert_eq!(proxy_order(&c, &d, &health)[0], 1);
    }

    #[test]
    fn failed_items_are_probed_again_after_the_reset_time() {
        let h = Health::new(3, Duration::from_millis(50));
        h.mark_failed(0);
        assert!(h.is_failed(0));
        assert_eq!(h.healthy_first(vec![0, 1, 2]), vec![1, 2, 0]);
        std::thread::sleep(Duration::from_millis(60));
        assert!(!h.is_failed(0));
        assert_eq!(h.healthy_first(vec![0, 1, 2]), vec![0, 1, 2]);
    }
}
