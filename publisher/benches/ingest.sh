#!/bin/bash
# Ingest benchmark: builds a multi-layer image from files of installed Debian
# packages, pushes it to a local docker-registry, ingests it with strata-publisher and
# prints, from the same run on the same machine:
#   * ingest: uncompressed MB/s, CPU use (user+sys / wall, in cores), peak RSS;
#   * `tar -xzf` of the same layer blobs to local disk (MB/s of uncompressed tar);
#   * `pigz -6 -p$(nproc)` over the uncompressed layer tars (the zlib-6 limit of the cores);
#   * the ratios ingest/tar and ingest/pigz.
#
# Usage: publisher/benches/ingest.sh [WORKDIR]
#   BENCH_LAYERS="dirA dirB:dirC ..."  one layer per word, ':' joins directories in a layer
#                                      (default: 5 layers, ~2.3 GB from /usr)
#   STRATA_PUBLISHER=path              binary to test (default: target/release/strata-publisher,
#                                      built with `cargo build --release -p publisher`)
# Needs: docker-registry, skopeo, pigz, python3, /usr/bin/time (all on the project machine).
set -euo pipefail

here=$(cd "$(dirname "$0")/../.." && pwd)
bin=${STRATA_PUBLISHER:-$here/target/release/strata-publisher}
work=${1:-$(mktemp -d /tmp/strata-bench.XXXXXX)}
layers=${BENCH_LAYERS:-"/usr/lib/x86_64-linux-gnu /usr/lib/llvm-14:/usr/lib/gcc /usr/bin:/usr/sbin:/usr/libexec /usr/include:/usr/lib/python3.11 /usr/share"}
ncpu=$(nproc)
mkdir -p "$work"/tars "$work"/layout/blobs/sha256
[ -x "$bin" ] || { echo "build first: cargo build --release -p publisher ($bin missing)" >&2; exit 1; }

log() { echo "[bench] $*" >&2; }
# measure LABEL CMD...: runs CMD, appends "LABEL wall user sys maxrss_kb" to $work/times
measure() {
    local label=$1; shift
    /usr/bin/time -f "$label %e %U %S %M" -a -o "$work/times" "$@"
}
: > "$work/times"

log "building layer tars from: $layers"
i=0
for spec in $layers; do
    i=$((i + 1))
    IFS=: read -r -a dirs <<< "$spec"
    rel=()
    for d in "${dirs[@]}"; do rel+=("${d#/}"); done
    tar -C / --sort=name --numeric-owner --warning=no-file-changed --ignore-failed-read \
        -cf "$work/tars/layer$i.tar" "${rel[@]}" 2>/dev/null || true
done
nlayers=$i
raw_bytes=$(cat "$work"/tars/*.tar | wc -c)
log "$nlayers layers, $raw_bytes bytes uncompressed"

log "pigz -6 -p$ncpu over the uncompressed tars"
sync
measure pigz sh -c "for f in $work/tars/*.tar; do pigz -6 -p$ncpu -c \"\$f\" > \"\$f.gz\"; done"

log "OCI layout + push to a local docker-registry"
python3 - "$work" "$nlayers" <<'EOF'
import hashlib, json, os, shutil, sys
work, n = sys.argv[1], int(sys.argv[2])
blobs = os.path.join(work, "layout/blobs/sha256")
def put(path=None, data=None):
    h = hashlib.sha256()
    if data is None:
        with open(path, "rb") as f:
            for b in iter(lambda: f.read(1 << 20), b""):
                h.update(b)
        size = os.path.getsize(path)
        shutil.copyfile(path, os.path.join(blobs, h.hexdigest()))
    else:
        h.update(data); size = len(data)
        open(os.path.join(blobs, h.hexdigest()), "wb").write(data)
    return "sha256:" + h.hexdigest(), size
def sha_file(p):
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for b in iter(lambda: f.read(1 << 20), b""):
            h.update(b)
    return "sha256:" + h.hexdigest()
layers, diffs = [], []
for i in range(1, n + 1):
    t = os.path.join(work, f"tars/layer{i}.tar")
    diffs.append(sha_file(t))
    d, s = put(t + ".gz")
    layers.append({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d, "size": s})
config = json.dumps({"architecture": "amd64", "os": "linux",
    "config": {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"], "Cmd": ["/bin/bash"]},
    "rootfs": {"type": "layers", "diff_ids": diffs}}).encode()
cd, cs = put(data=config)
manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
    "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cs},
    "layers": layers}).encode()
md, ms = put(data=manifest)
json.dump({"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
    "digest": md, "size": ms, "annotations": {"org.opencontainers.image.ref.name": "1"}}]},
    open(os.path.join(work, "layout/index.json"), "w"))
open(os.path.join(work, "layout/oci-layout"), "w").write('{"imageLayoutVersion":"1.0.0"}')
EOF
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat > "$work/registry.yml" <<EOF
version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $work/registry
http:
  addr: 127.0.0.1:$port
EOF
docker-registry serve "$work/registry.yml" > "$work/registry.log" 2>&1 &
registry_pid=$!
trap 'kill $registry_pid 2>/dev/null || true' EXIT
for _ in $(seq 100); do
    curl -fs "http://127.0.0.1:$port/v2/" >/dev/null 2>&1 && break
    sleep 0.1
done
skopeo copy --quiet --dest-tls-verify=false "oci:$work/layout:1" "docker://127.0.0.1:$port/bench/debian:1"

log "strata-publisher ingest"
rm -rf "$work/repo"
"$bin" init --repo "$work/repo" --fqrn bench.example.org > /dev/null
sync
measure ingest "$bin" ingest --repo "$work/repo" "docker://127.0.0.1:$port/bench/debian:1" \
    > "$work/ingest.out" 2> "$work/ingest.log"
"$bin" verify --repo "$work/repo" > "$work/verify.out"

log "tar -xzf of the same layer blobs"
rm -rf "$work/extract"; mkdir -p "$work/extract"
sync
measure tar sh -c "for f in $work/tars/*.tar.gz; do tar -C $work/extract -xzf \"\$f\"; done"
rm -rf "$work/extract"

python3 - "$work" "$raw_bytes" "$ncpu" "$nlayers" <<'EOF'
import sys
work, raw, ncpu, nlayers = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
t = {}
for line in open(f"{work}/times"):
    label, wall, user, sys_, rss = line.split()
    t[label] = (float(wall), float(user) + float(sys_), int(rss))
mb = raw / 1e6
def rate(k): return mb / t[k][0]
print(f"image: {nlayers} layers, {mb:.0f} MB uncompressed; machine: {ncpu} cores")
for k, name in [("ingest", "strata-publisher ingest (registry -> repository)"),
                ("tar", "tar -xzf (same layers, local disk)"),
                ("pigz", f"pigz -6 -p{ncpu} (zlib-6 limit)")]:
    wall, cpu, rss = t[k]
    print(f"{name:50s} {wall:7.1f} s {rate(k):7.1f} MB/s  CPU {cpu / wall:4.2f} cores  peak RSS {rss / 1024:6.0f} MB")
print(f"ratio ingest / tar -xzf : {rate('ingest') / rate('tar'):.2f}")
print(f"ratio ingest / pigz -6  : {rate('ingest') / rate('pigz'):.2f}")
print(open(f"{work}/verify.out").read().strip())
EOF
log "work dir: $work (remove it when done)"
