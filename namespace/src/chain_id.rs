//! OCI ChainIDs (OCI image spec, config.md "Layer ChainID"): the name of a layer stack, and
//! so of a containerd snapshot and of `.chainids/<hh>/<hex>`.
//!
//! `ChainID(L0) = DiffID(L0)`; `ChainID(L0..Ln) = sha256(ChainID(L0..Ln-1) + " " + DiffID(Ln))`,
//! hashing the `sha256:<hex>` texts.

use crate::digest::Digest;

/// The ChainIDs of the layer stack with `diff_ids` (bottom first), bottom first:
/// `chain_ids(d)[i]` names layers `0..=i`. Empty for no layers.
pub fn chain_ids(diff_ids: &[Digest]) -> Vec<Digest> {
    let mut out: Vec<Digest> = Vec::with_capacity(diff_ids.len());
    for diff in diff_ids {
        let next = match out.last() {
            None => diff.clone(),
            Some(prev) => Digest::of_bytes(format!("{prev} {diff}").as_bytes()),
        };
        out.push(next);
    }
    out
}

/// The ChainID of the whole stack (the top layer's), `None` for no layers.
pub fn top_chain_id(diff_ids: &[Digest]) -> Option<Digest> {
    chain_ids(diff_ids).pop()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(n: u8) -> Digest {
        Digest::of_bytes(&[n])
    }

    #[test]
    fn chain_ids_follow_the_oci_rule() {
        let chains = chain_ids(&[d(1), d(2), d(3)]);
        assert_eq!(chains[0], d(1));
        let c1 = Digest::of_bytes(format!("{} {}", d(1), d(2)).as_bytes());
        assert_eq!(chains[1], c1);
        assert_eq!(
            chains[2],
            Digest::of_bytes(format!("{c1} {}", d(3)).as_bytes())
        );
        assert!(chain_ids(&[]).is_empty());
        assert_eq!(top_chain_id(&[]), None);
        assert_eq!(top_chain_id(&[d(1)]), Some(d(1)));
        assert_eq!(top_chain_id(&[d(1), d(2), d(3)]), Some(chains[2].clone()));
    }

    #[test]
    fn known_chain_id_vector() -> crate::Result<()> {
        // printf 'sha256:aaa…a sha256:bbb…b' | sha256sum (coreutils), 64 of each letter.
        let a: Digest = format!("sha256:{}", "a".repeat(64)).parse()?;
        let b: Digest = format!("sha256:{}", "b".repeat(64)).parse()?;
        assert_eq!(
            chain_ids(&[a, b])[1].to_string(),
            "sha256:ccd722928bd92476ba1745586fed6e45a102504185ad88cd89e01ff116fd146c"
        );
        Ok(())
    }
}
