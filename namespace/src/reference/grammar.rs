//! The grammar of distribution references (docker's `reference` package, `regexp.go`;
//! the same language as `oci_spec::distribution::Reference`'s regular expression), checked
//! by hand.
//!
//! Why not that library's parser: it compiles its expression — with a Unicode-aware `\w`
//! and a 20 MB size limit — the first time a process parses a name. Measured on the
//! project's machine (release build): 51 ms on an idle machine and up to 280 ms while a
//! container start kept both cores busy, paid by every `strata-snapshotter pull` (a process
//! of its own) and by the snapshotter's first `Prepare` of an image, on the critical path of
//! a container start. Checking the grammar directly takes microseconds. A differential
//! test holds this parser to the library's on a corpus of good and bad names.
//!
//! ```text
//! reference  := name [ ":" tag ] [ "@" digest ]
//! name       := [ domain "/" ] path-component [ "/" path-component ]*
//! domain     := domain-component [ "." domain-component ]* [ ":" port-number ]
//! domain-component := /([a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])/
//! port-number      := /[0-9]+/
//! path-component   := alpha-numeric [ separator alpha-numeric ]*
//! alpha-numeric    := /[a-z0-9]+/
//! separator        := /[_.]|__|[-]+/
//! tag        := /[\w][\w.-]{0,127}/          (ASCII \w: registries take no other)
//! digest     := algorithm ":" /[0-9a-fA-F]{32,}/
//! algorithm  := /[A-Za-z][A-Za-z0-9]*([-_+.][A-Za-z][A-Za-z0-9]*)*/
//! ```

/// A reference split into its parts, each checked against the grammar; the name is not
/// yet split into registry and repository.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Parts<'a> {
    pub name: &'a str,
    pub tag: Option<&'a str>,
    pub digest: Option<&'a str>,
}

/// Splits `text` into name, tag and digest and checks each against the grammar; the
/// reason in words if it does not parse.
pub(super) fn parse(text: &str) -> Result<Parts<'_>, &'static str> {
    if text.is_empty() {
        return Err("repository name must have at least one component");
    }
    let (rest, digest) = match text.split_once('@') {
        Some((rest, digest)) => (rest, Some(digest)),
        None => (text, None),
    };
    // A colon whose right side has no slash ends the name; one followed by a slash is a
    // registry's port (a name with a registry always has a path after it).
    let (name, tag) = match rest.rsplit_once(':') {
        Some((name, tag)) if !tag.contains('/') => (name, Some(tag)),
        _ => (rest, None),
    };
    if !is_name(name) {
        return Err("invalid reference format");
    }
    if tag.is_some_and(|t| !is_tag(t)) {
        return Err("tag must be [A-Za-z0-9_.-], not starting with . or -, at most 128 characters");
    }
    if let Some(d) = digest {
        check_digest(d)?;
    }
    Ok(Parts { name, tag, digest })
}

/// `[domain "/"] path-component ["/" path-component]*`.
fn is_name(name: &str) -> bool {
    let mut components = name.split('/');
    let Some(first) = components.next() else {
        return false;
    };
    let rest: Vec<&str> = components.collect();
    if !rest.iter().all(|c| is_path_component(c)) {
        return false;
    }
    is_path_component(first) || (!rest.is_empty() && is_domain(first))
}

/// `alpha-numeric [separator alpha-numeric]*`, separators `.`, `_`, `__` or dashes.
fn is_path_component(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &b[start..i];
        let ok = matches!(sep, b"." | b"_" | b"__") || sep.iter().all(|&x| x == b'-');
        if !ok {
            return false;
        }
    }
    true
}

/// `domain-component ["." domain-component]* [":" port-number]`.
fn is_domain(d: &str) -> bool {
    let (host, port) = match d.split_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (d, None),
    };
    if port.is_some_and(|p| p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit())) {
        return false;
    }
    host.split('.').all(|c| {
        let b = c.as_bytes();
        !b.is_empty()
            && b[0].is_ascii_alphanumeric()
            && b[b.len() - 1].is_ascii_alphanumeric()
            && b.iter().all(|&x| x.is_ascii_alphanumeric() || x == b'-')
    })
}

/// `[\w][\w.-]{0,127}`, ASCII.
fn is_tag(t: &str) -> bool {
    let word = |x: u8| x.is_ascii_alphanumeric() || x == b'_';
    let b = t.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && word(b[0])
        && b[1..].iter().all(|&x| word(x) || x == b'.' || x == b'-')
}

/// `algorithm ":" hex{32,}`, and the length of the known algorithms' digests.
fn check_digest(d: &str) -> Result<(), &'static str> {
    let Some((algorithm, hex)) = d.split_once(':') else {
        return Err("invalid reference format");
    };
    let algorithm_ok = algorithm.split(['-', '_', '+', '.']).all(|part| {
        let b = part.as_bytes();
        !b.is_empty() && b[0].is_ascii_alphabetic() && b.iter().all(u8::is_ascii_alphanumeric)
    });
    if !algorithm_ok || hex.len() < 32 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err("invalid reference format");
    }
    let expected = match algorithm {
        "sha256" => 64,
        "sha384" => 96,
        "sha512" => 128,
        _ => return Err("unsupported digest algorithm"),
    };
    if hex.len() != expected {
        return Err("invalid checksum digest length");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::distribution::Reference;

    /// Names good and bad, from docker's `reference_test.go`, oci-spec's tests and this
    /// project's own edge cases.
    const CORPUS: &[&str] = &[
        "busybox",
        "test.com:tag",
        "test.com:5000",
        "test.com/repo:tag",
        "test:5000/repo",
        "test:5000/repo:tag",
        "test:5000/repo@sha256:ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
        "test:5000/repo:tag@sha256:ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
        "lowercase:Uppercase",
        "sub-dom1.foo.com/bar/baz/quux",
        "sub-dom1.foo.com/bar/baz/quux:some-long-tag",
        "b.gcr.io/test.example.com/my-app:test.example.com",
        "xn--n3h.com/myimage:xn--n3h.com",
        "foo_bar.com:8080",
        "foo/foo_bar.com:8080",
        "opensuse/leap:15.3",
        "127.0.0.1:5000/demo:1",
        "localhost/a/b",
        "localhost:5000/a/b@sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        "a__b/c--d/e.f_g:T_a-g.1",
        "a---b",
        "Upper/x",
        "UPPER.example.com/x",
        "",
        ":justtag",
        "@sha256:ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
        "repo@sha256:ffffffffffffffffffffffffffffffffff",
        "validname@invaliddigest:ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
        "x@sha512:ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
        "x@sha384:ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
        "x@a+b.c-d_e:ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
        "x@1abc:ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
        "x@sha256:gggggggggggggggggggggggggggggggggggggggggggggggggggggggggggggggg",
        "Uppercase:tag",
        "test:5000/Uppercase/lowercase:tag",
        "aa/asdf$$^/aa",
        "a//b",
        "a/",
        "/a",
        "a:",
        "a:-t",
        "a:.t",
        "a:_t",
        "x:5/y",
        "x:/y",
        "x:y:z",
        "x@y@z",
        "-a/b",
        "a-/b",
        "a.-b/c",
        "a._b",
        "a___b",
        "a-_b",
        ".flat/x:1",
        "a/../b",
        "../x",
        "host:65536000/x",
        "h-o.st/x",
        "-host.com/x",
        "host-.com/x",
        "ho_st.com/x",
        "[::1]:5000/x",
        "demo:t\u{e9}",
    ];

    #[test]
    fn accepts_and_splits_what_the_library_does() {
        let tag_of_128 = format!("x:{}", "t".repeat(128));
        let tag_of_129 = format!("x:{}", "t".repeat(129));
        let long_name = format!("x/{}", "a".repeat(260));
        let extra = [tag_of_128.as_str(), tag_of_129.as_str(), long_name.as_str()];
        for text in CORPUS.iter().copied().chain(extra) {
            let library = Reference::try_from(text);
            let ours = parse(text);
            match (&library, &ours) {
                (Ok(r), Ok(p)) => {
                    // The library adds the default tag itself; ours leaves that to the caller.
                    let tag = p.tag.or(if p.digest.is_none() {
                        Some("latest")
                    } else {
                        None
                    });
                    assert_eq!(r.tag(), tag, "{text:?}: tag");
                    assert_eq!(r.digest(), p.digest, "{text:?}: digest");
                    let (registry, repository) = super::super::split_domain(p.name);
                    assert_eq!(r.registry(), registry, "{text:?}: registry");
                    assert_eq!(r.repository(), repository, "{text:?}: repository");
                }
                (Err(_), Err(_)) => {}
                // The library's `\w` takes non-ASCII tags; registries do not.
                (Ok(_), Err(_)) if !text.is_ascii() => {}
                // A repository over 255 characters: the caller checks the length.
                (Err(_), Ok(_)) if text.len() > 255 => {}
                _ => panic!("{text:?}: library {library:?}, ours {ours:?}"),
            }
        }
    }
}
