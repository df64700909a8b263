#!/usr/bin/env python3
"""Synthetic images for the memory runs of publisher/README.md.

Usage: synthetic_image.py WORK KIND...   (one layer per KIND)
  files:N      N files of 100-3000 random bytes, 1000 per directory (no directory entry for
               the layer's top directory, so it is implied)
  big:N:GB     N files of GB GiB each; every MiB is 64 KiB random bytes, then zeros
  dir:A,B      the directories A, B of this machine (as benches/ingest.sh builds layers)
Writes the gzip (pigz -6) layer blobs and an OCI layout to WORK/layout (push it with
`skopeo copy oci:WORK/layout:1 docker://HOST:PORT/REPO:1`) and the total uncompressed size
to WORK/raw_bytes. The tar streams go straight into pigz: no uncompressed copy on disk."""
import hashlib, io, json, os, random, subprocess, sys, tarfile, time
work = sys.argv[1]; kinds = sys.argv[2:]
blobs = os.path.join(work, "layout/blobs/sha256"); os.makedirs(blobs, exist_ok=True)

class Tee:
    def __init__(self, f): self.f = f; self.h = hashlib.sha256(); self.n = 0
    def write(self, b): self.h.update(b); self.n += len(b); return self.f.write(b)
    def flush(self): self.f.flush()

class Gen(io.RawIOBase):
    def __init__(self, size, seed): self.left = size; self.r = random.Random(seed)
    def readable(self): return True
    def readinto(self, b):
        n = min(len(b), self.left, 1 << 20)
        if n <= 0: return 0
        blk = bytearray(n); k = min(n, 65536); blk[:k] = self.r.randbytes(k)
        b[:n] = blk; self.left -= n; return n

def layer(i, kind):
    tmp = os.path.join(work, f"layer{i}.gz")
    with open(tmp, "wb") as out:
        p = subprocess.Popen(["pigz", "-6", "-p2", "-c"], stdin=subprocess.PIPE, stdout=out)
        tee = Tee(p.stdin)
        parts = kind.split(":")
        tf = None if parts[0] == "dir" else tarfile.open(fileobj=tee, mode="w|", format=tarfile.PAX_FORMAT)
        r = random.Random(i)
        if parts[0] == "dir":
            tarp = subprocess.Popen(["tar", "-C", "/", "--sort=name", "--numeric-owner", "--warning=no-file-changed",
                "--ignore-failed-read", "-cf", "-"] + [d.lstrip("/") for d in parts[1].split(",")], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
            for b in iter(lambda: tarp.stdout.read(1 << 20), b""): tee.write(b)
            tarp.wait()
            tf = None
        elif parts[0] == "files":
            n = int(parts[1])
            for d in range(0, n, 1000):
                ti = tarfile.TarInfo(f"syn{i}/d{d // 1000:04d}"); ti.type = tarfile.DIRTYPE; ti.mode = 0o755; ti.mtime = 1700000000
                tf.addfile(ti)
                for f in range(d, min(n, d + 1000)):
                    data = r.randbytes(r.randint(100, 3000))
                    ti = tarfile.TarInfo(f"syn{i}/d{d // 1000:04d}/file-with-a-longish-name-{f:07d}.txt"); ti.size = len(data); ti.mode = 0o644; ti.mtime = 1700000000
                    tf.addfile(ti, io.BytesIO(data))
        else:
            n, gb = int(parts[1]), float(parts[2])
            for f in range(n):
                size = int(gb * (1 << 30))
                ti = tarfile.TarInfo(f"big{i}-{f}.bin"); ti.size = size; ti.mode = 0o644; ti.mtime = 1700000000
                tf.addfile(ti, io.BufferedReader(Gen(size, i * 100 + f), 1 << 20))
        if tf is not None: tf.close()
        tee.flush(); p.stdin.close(); p.wait()
    h = hashlib.sha256()
    with open(tmp, "rb") as f:
        for b in iter(lambda: f.read(1 << 20), b""): h.update(b)
    os.rename(tmp, os.path.join(blobs, h.hexdigest()))
    return ({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": "sha256:" + h.hexdigest(),
             "size": os.path.getsize(os.path.join(blobs, h.hexdigest()))}, "sha256:" + tee.h.hexdigest(), tee.n)

def put(data):
    h = hashlib.sha256(data).hexdigest(); open(os.path.join(blobs, h), "wb").write(data)
    return "sha256:" + h, len(data)
layers, diffs, raw = [], [], 0
for i, k in enumerate(kinds, 1):
    t = time.time(); l, d, n = layer(i, k); layers.append(l); diffs.append(d); raw += n
    print(f"layer {i} {k}: {n} bytes raw, {l['size']} gz, {time.time() - t:.0f}s", flush=True)
config = json.dumps({"architecture": "amd64", "os": "linux", "config": {"Cmd": ["/bin/sh"]},
    "rootfs": {"type": "layers", "diff_ids": diffs}}).encode()
cd, cs = put(config)
md, ms = put(json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
    "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cs}, "layers": layers}).encode())
json.dump({"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
    "digest": md, "size": ms, "annotations": {"org.opencontainers.image.ref.name": "1"}}]}, open(os.path.join(work, "layout/index.json"), "w"))
open(os.path.join(work, "layout/oci-layout"), "w").write('{"imageLayoutVersion":"1.0.0"}')
open(os.path.join(work, "raw_bytes"), "w").write(str(raw))
print("raw bytes", raw)
