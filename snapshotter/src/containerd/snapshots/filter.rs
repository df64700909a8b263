//! List filters in containerd's filter syntax (`containerd/filters`), as sent in
//! `ListSnapshotsRequest.filters`.
//!
//! Several filter strings are alternatives (OR); within one string, selectors separated by
//! `,` must all hold (AND). A selector is a field path (`name`, `parent`, `kind`,
//! `labels.<key>`; a path element may be double-quoted, e.g.
//! `labels."containerd.io/snapshot.ref"`), optionally followed by `==`, `!=` or `~=` and a
//! value (bare up to the next `,`, or double-quoted, or `/regex/`). A path alone tests for
//! presence.
//!
//! Semantics follow `filters/filter.go` (`selector.Match`) and the snapshot adaptor of
//! `snapshots/storage` (`adaptSnapshot`): `name`, `parent` and `kind` always exist
//! (`parent` is "" for none; containerd asks for `parent==""` in the handshake of a bottom
//! layer; `kind` is `active`, `view` or `committed`); `labels.<k>` exists when the label is
//! set and the path has exactly one element after `labels`; every other field is absent.
//! Presence = the field exists; `==` = exists and equal; `!=` = not equal, a missing field
//! counting as ""; `~=` = the value (or "" when missing) matches the regular expression
//! (Go RE2 syntax, which the `regex` crate follows), unanchored as Go's `MatchString`.
//! A regular expression that does not compile is a syntax error (`InvalidArgument`), as
//! containerd's parser makes it.

use crate::containerd::snapshots::store::Record;
use crate::error::{Error, Result};

/// A parsed set of filter strings.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    /// OR of ANDs; empty = match everything.
    alternatives: Vec<Vec<Selector>>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Selector {
    path: Vec<String>,
    op: Op,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Op {
    Present,
    Equal(String),
    NotEqual(String),
    /// `~=` with the compiled expression.
    Matches(Regex),
}

/// A compiled `~=` expression; compared by its source text.
#[derive(Clone, Debug)]
struct Regex(regex::Regex);

impl PartialEq for Regex {
    fn eq(&self, other: &Regex) -> bool {
        self.0.as_str() == other.0.as_str()
    }
}

impl Eq for Regex {}

impl Filter {
    /// Parses filter strings; empty strings are skipped. [`Error::SnapshotInvalid`] on
    /// syntax errors.
    pub fn parse(filters: &[String]) -> Result<Filter> {
        let mut alternatives = Vec::new();
        for text in filters {
            if text.trim().is_empty() {
                continue;
            }
            alternatives.push(Parser::new(text).filter()?);
        }
        Ok(Filter { alternatives })
    }

    /// Whether `record` passes.
    pub fn matches(&self, record: &Record) -> bool {
        self.alternatives.is_empty()
            || self
                .alternatives
                .iter()
                .any(|all| all.iter().all(|s| s.matches(record)))
    }
}

impl Selector {
    fn matches(&self, record: &Record) -> bool {
        let value: Option<String> = match self.path.first().map(String::as_str) {
            Some("name") if self.path.len() == 1 => Some(record.key.clone()),
            // Always present, "" for no parent (containerd `snapshots.adaptSnapshot`).
            Some("parent") if self.path.len() == 1 => {
                Some(record.parent.clone().unwrap_or_default())
            }
            Some("kind") if self.path.len() == 1 => Some(record.kind.as_str().to_string()),
            Some("labels") if self.path.len() == 2 => record.labels.get(&self.path[1]).cloned(),
            _ => None, // unknown field: absent (adaptSnapshot returns "", false)
        };
        match &self.op {
            Op::Present => value.is_some(),
            Op::Equal(v) => value.as_deref() == Some(v.as_str()),
            Op::NotEqual(v) => value.as_deref().unwrap_or("") != v,
            Op::Matches(re) => re.0.is_match(value.as_deref().unwrap_or("")),
        }
    }
}

struct Parser<'a> {
    text: &'a str,
    chars: Vec<char>,
    pos: usize,
}

impl<'a> Parser<'a> {
    fn new(text: &'a str) -> Parser<'a> {
        Parser {
            text,
            chars: text.chars().collect(),
            pos: 0,
        }
    }

    fn error(&self, what: &str) -> Error {
        Error::SnapshotInvalid(format!(
            "filter {:?} at character {}: {what}",
            self.text, self.pos
        ))
    }

    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn skip_spaces(&mut self) {
        while self.peek().is_some_and(char::is_whitespace) {
            self.pos += 1;
        }
    }

    fn filter(&mut self) -> Result<Vec<Selector>> {
        let mut selectors = vec![self.selector()?];
        loop {
            self.skip_spaces();
            match self.peek() {
                None => return Ok(selectors),
                Some(',') => {
                    self.pos += 1;
                    selectors.push(self.selector()?);
                }
                Some(_) => return Err(self.error("expected ',' or end")),
            }
        }
    }

    fn selector(&mut self) -> Result<Selector> {
        let mut path = vec![self.field()?];
        while self.peek() == Some('.') {
            self.pos += 1;
            path.push(self.field()?);
        }
        self.skip_spaces();
        let op = match (self.peek(), self.chars.get(self.pos + 1).copied()) {
            (None, _) | (Some(','), _) => {
                return Ok(Selector {
                    path,
                    op: Op::Present,
                });
            }
            (Some('='), Some('=')) => "==",
            (Some('!'), Some('=')) => "!=",
            (Some('~'), Some('=')) => "~=",
            _ => return Err(self.error("expected '==', '!=' or '~='")),
        };
        self.pos += 2;
        self.skip_spaces();
        let value = self.value()?;
        let op = match op {
            "==" => Op::Equal(value),
            "!=" => Op::NotEqual(value),
            _ => Op::Matches(Regex(
                regex::Regex::new(&value)
                    .map_err(|e| self.error(&format!("bad regular expression: {e}")))?,
            )),
        };
        Ok(Selector { path, op })
    }

    fn field(&mut self) -> Result<String> {
        self.skip_spaces();
        if self.peek() == Some('"') {
            return self.quoted('"');
        }
        let start = self.pos;
        while self
            .peek()
            .is_some_and(|c| !c.is_whitespace() && !matches!(c, '.' | ',' | '=' | '!' | '~' | '"'))
        {
            self.pos += 1;
        }
        if start == self.pos {
            return Err(self.error("expected a field name"));
        }
        Ok(self.chars[start..self.pos].iter().collect())
    }

    fn value(&mut self) -> Result<String> {
        match self.peek() {
            Some('"') => self.quoted('"'),
            Some('/') => self.quoted('/'),
            _ => {
                let start = self.pos;
                while self.peek().is_some_and(|c| c != ',') {
                    self.pos += 1;
                }
                let v: String = self.chars[start..self.pos].iter().collect();
                Ok(v.trim_end().to_string())
            }
        }
    }

    /// A string between `quote` characters with backslash escapes (`\n`, `\t`, `\\`,
    /// `\<quote>`; any other escaped character stands for itself). Between `/` (a regular
    /// expression) only `\/` is unescaped; other escapes are kept for the regex.
    fn quoted(&mut self, quote: char) -> Result<String> {
        self.pos += 1;
        let mut out = String::new();
        loop {
            match self.peek() {
                None => return Err(self.error("unterminated quoted string")),
                Some(c) if c == quote => {
                    self.pos += 1;
                    return Ok(out);
                }
                Some('\\') => {
                    self.pos += 1;
                    match self.peek() {
                        None => return Err(self.error("unterminated escape")),
                        // Inside /regex/ only `\/` is ours; `\d`, `\.` … belong to the regex.
                        Some(c) if quote == '/' && c != '/' => {
                            out.push('\\');
                            out.push(c);
                        }
                        Some('n') => out.push('\n'),
                        Some('t') => out.push('\t'),
                        Some(c) => out.push(c),
                    }
                    self.pos += 1;
                }
                Some(c) => {
                    out.push(c);
                    self.pos += 1;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::containerd::snapshots::store::{Kind, Labels};

    fn record(key: &str, parent: Option<&str>, kind: Kind, labels: &[(&str, &str)]) -> Record {
        Record {
            id: 1,
            key: key.into(),
            parent: parent.map(Into::into),
            kind,
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<Labels>(),
            created_ns: 1,
            updated_ns: 1,
            remote: None,
            size: 0,
            inodes: 0,
        }
    }

    fn parse(f: &[&str]) -> Filter {
        let owned: Vec<String> = f.iter().map(|s| s.to_string()).collect();
        Filter::parse(&owned).unwrap_or_else(|e| panic!("{f:?}: {e}"))
    }

    #[test]
    fn containerd_remote_handshake_filter() {
        // The exact shape metadata/snapshot.go sends after a remote Prepare.
        let f = parse(&[r#"labels."containerd.io/snapshot.ref"==sha256:abc,parent=="p1""#]);
        let hit = record(
            "sha256:abc",
            Some("p1"),
            Kind::Committed,
            &[("containerd.io/snapshot.ref", "sha256:abc")],
        );
        assert!(f.matches(&hit));
        let wrong_parent = record(
            "sha256:abc",
            Some("p2"),
            Kind::Committed,
            &[("containerd.io/snapshot.ref", "sha256:abc")],
        );
        assert!(!f.matches(&wrong_parent));
        let no_label = record("sha256:abc", Some("p1"), Kind::Committed, &[]);
        assert!(!f.matches(&no_label));
    }

    #[test]
    fn no_parent_is_the_empty_string() {
        // containerd's handshake for a bottom layer asks for parent=="".
        let root = record(
            "sha256:abc",
            None,
            Kind::Committed,
            &[("containerd.io/snapshot.ref", "sha256:abc")],
        );
        let f = parse(&[r#"labels."containerd.io/snapshot.ref"==sha256:abc,parent=="""#]);
        assert!(f.matches(&root));
        assert!(parse(&[r#"parent!="x""#]).matches(&root));
        assert!(parse(&["parent"]).matches(&root));
        let child = record("c", Some("p"), Kind::Committed, &[]);
        assert!(!parse(&[r#"parent=="""#]).matches(&child));
    }

    #[test]
    fn name_kind_presence_and_alternatives() {
        let a = record("a", None, Kind::Active, &[("x", "1")]);
        assert!(parse(&["name==a"]).matches(&a));
        assert!(!parse(&["name==b"]).matches(&a));
        assert!(parse(&["kind==active"]).matches(&a));
        assert!(!parse(&["kind==committed"]).matches(&a));
        assert!(parse(&["labels.x"]).matches(&a));
        assert!(!parse(&["labels.y"]).matches(&a));
        assert!(parse(&["name==b", "kind==active"]).matches(&a));
        assert!(!parse(&["name==b", "kind==view"]).matches(&a));
        assert!(parse(&[]).matches(&a));
        assert!(parse(&[""]).matches(&a));
    }

    #[test]
    fn regex_matches_unanchored_and_missing_fields_are_empty() {
        let a = record(
            "default/3/extract-1 sha256:ab",
            Some("p"),
            Kind::Active,
            &[("team", "blue-42")],
        );
        assert!(parse(&["name~=/extract-/"]).matches(&a));
        assert!(parse(&[r#"name~="^default/[0-9]+/""#]).matches(&a));
        assert!(!parse(&["name~=/^z/"]).matches(&a));
        assert!(parse(&[r"labels.team~=/blue-\d+$/"]).matches(&a));
        assert!(!parse(&["labels.team~=/^red/"]).matches(&a));
        // A missing label is "" for ~= and !=.
        assert!(parse(&["labels.none~=/^$/"]).matches(&a));
        assert!(parse(&["labels.none!=x"]).matches(&a));
        assert!(!parse(&["labels.none"]).matches(&a));
        // AND inside one string, OR across strings.
        assert!(parse(&["kind==active,labels.team~=/blue/,parent==p"]).matches(&a));
        assert!(!parse(&["kind==active,labels.team~=/red/"]).matches(&a));
        assert!(parse(&["kind==view", "labels.team~=/blue/"]).matches(&a));
    }

    #[test]
    fn unknown_fields_and_nested_label_paths_are_absent() {
        let a = record("a", None, Kind::Active, &[("x.y", "1")]);
        assert!(!parse(&["nosuchfield==1"]).matches(&a));
        assert!(!parse(&["nosuchfield"]).matches(&a));
        assert!(parse(&["nosuchfield!=1"]).matches(&a));
        // Unquoted dots split the path (containerd's checkMap wants one element).
        assert!(!parse(&["labels.x.y==1"]).matches(&a));
        assert!(parse(&[r#"labels."x.y"==1"#]).matches(&a));
    }

    #[test]
    fn quoted_values_with_escapes_and_spaces() {
        let a = record("a b", None, Kind::View, &[("k,1", "v\"q")]);
        assert!(parse(&[r#"name == "a b""#]).matches(&a));
        assert!(parse(&[r#"labels."k,1"=="v\"q""#]).matches(&a));
    }

    #[test]
    fn syntax_errors_are_invalid_argument() {
        for bad in [
            r#"name=="x"#,
            "name=x",
            "==x",
            "name==a b,",
            "labels.\"k",
            "name~=/(/",
        ] {
            let r = Filter::parse(&[bad.to_string()]);
            assert!(matches!(r, Err(Error::SnapshotInvalid(_))), "{bad}: {r:?}");
        }
    }
}
