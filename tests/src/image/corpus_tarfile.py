"""The corpus's Python tarfile writer (tests/src/image/corpus.rs).

Usage: python3 corpus_tarfile.py FORMAT SOURCE OUT CASE
  FORMAT  pax | gnu
  SOURCE  the staged corpus directory, archived as "." (tarfile.add, recursive)
  CASE    full:         SOURCE, then PAX xattrs on one more file (pax only), then a hard
                        link to a file that a later entry replaces, and a whiteout owned
                        by uid 1000
          missing-link: SOURCE, then a hard link to a path no entry has
          non-utf8:     SOURCE, then a file, a directory with a file, a symlink and a hard
                        link whose names (and link targets) are not UTF-8
"""

import io
import sys
import tarfile

MTIME = 1_700_000_000


def regular(name, data, **pax):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = MTIME
    info.mode = 0o644
    if pax:
        info.pax_headers = pax
    return info, io.BytesIO(data)


def main():
    fmt, source, out, case = sys.argv[1:5]
    format_ = {"pax": tarfile.PAX_FORMAT, "gnu": tarfile.GNU_FORMAT}[fmt]
    # surrogateescape keeps non-UTF-8 bytes as they are.
    with tarfile.open(out, "w", format=format_, encoding="utf-8", errors="surrogateescape") as tar:
        tar.add(source, arcname=".", recursive=True)
        if case == "full":
            if fmt == "pax":
                tar.addfile(*regular("xattrs/python", b"pax xattr\n", **{"SCHILY.xattr.user.python": "yes"}))
            dir_ = tarfile.TarInfo("later")
            dir_.type = tarfile.DIRTYPE
            dir_.mode = 0o755
            dir_.mtime = MTIME
            tar.addfile(dir_)
            tar.addfile(*regular("later/target", b"first version\n"))
            link = tarfile.TarInfo("later/link")
            link.type = tarfile.LNKTYPE
            link.linkname = "later/target"
            link.mtime = MTIME
            link.mode = 0o644
            tar.addfile(link)
            tar.addfile(*regular("later/target", b"second version, written after the link\n"))
            # A whiteout owned by a user: containerd chowns the overlay device so. (In a
            # directory the base layer has too: in a directory of one layer only, an
            # overlay mount lists a whiteout that it then cannot stat.)
            whiteout, data = regular("gone/.wh.never-there", b"")
            whiteout.uid, whiteout.gid = 1000, 1000
            tar.addfile(whiteout, data)
        elif case == "missing-link":
            link = tarfile.TarInfo("missing/link")
            link.type = tarfile.LNKTYPE
            link.linkname = "missing/nothing-here"
            link.mtime = MTIME
            tar.addfile(link)
        elif case == "non-utf8":
            raw = lambda b: b.decode("utf-8", "surrogateescape")
            tar.addfile(*regular(raw(b"caf\xe9"), b"latin-1 name\n"))
            dir_ = tarfile.TarInfo(raw(b"r\xe9pertoire"))
            dir_.type = tarfile.DIRTYPE
            dir_.mode = 0o755
            dir_.mtime = MTIME
            tar.addfile(dir_)
            tar.addfile(*regular(raw(b"r\xe9pertoire/\xff\xfe"), b"in a latin-1 directory\n"))
            link = tarfile.TarInfo(raw(b"lien-\xe9"))
            link.type = tarfile.SYMTYPE
            link.linkname = raw(b"caf\xe9")
            link.mtime = MTIME
            tar.addfile(link)
            hard = tarfile.TarInfo(raw(b"dur-\xe9"))
            hard.type = tarfile.LNKTYPE
            hard.linkname = raw(b"caf\xe9")
            hard.mtime = MTIME
            hard.mode = 0o644
            tar.addfile(hard)
        else:
            raise SystemExit(f"unknown case {case}")


main()
