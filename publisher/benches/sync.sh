#!/bin/bash
# Sync benchmark: a `strata-publisher sync` pass with nothing to change over a
# recipe of 100 entries (100 tags of one tiny image in a local docker-registry). Prints the
# wall time of the first pass (ingests the 100 tags, one layer) and of five passes that
# change nothing (one manifest HEAD per entry, no revision). Target: < 2 s per idle pass.
#
# Usage: publisher/benches/sync.sh [WORKDIR]
#   STRATA_PUBLISHER=path   binary to test (default: target/release/strata-publisher,
#                           built with `cargo build --release -p publisher`)
#   BENCH_TAGS=N            recipe entries (default 100)
#   BENCH_GLOB=1            one `tiny:*` glob entry instead of N explicit entries
# Needs: docker-registry, skopeo, python3.
set -euo pipefail

here=$(cd "$(dirname "$0")/../.." && pwd)
bin=${STRATA_PUBLISHER:-$here/target/release/strata-publisher}
work=${1:-$(mktemp -d /tmp/strata-sync-bench.XXXXXX)}
tags=${BENCH_TAGS:-100}
[ -x "$bin" ] || { echo "build first: cargo build --release -p publisher ($bin missing)" >&2; exit 1; }
mkdir -p "$work"
log() { echo "[bench] $*" >&2; }

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
addr=127.0.0.1:$port
cat > "$work/registry.yml" <<EOF
version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $work/storage
http:
  addr: $addr
EOF
docker-registry serve "$work/registry.yml" > "$work/registry.log" 2>&1 &
registry_pid=$!
trap 'kill $registry_pid 2>/dev/null || true' EXIT
for _ in $(seq 100); do
    python3 -c "import urllib.request; urllib.request.urlopen('http://$addr/v2/')" 2>/dev/null && break
    sleep 0.1
done

log "tiny image, pushed as $tags tags"
python3 - "$work" <<'EOF'
import gzip, hashlib, io, json, os, sys, tarfile
work = sys.argv[1]
blobs = os.path.join(work, "layout/blobs/sha256")
os.makedirs(blobs, exist_ok=True)
def put(data):
    d = hashlib.sha256(data).hexdigest()
    open(os.path.join(blobs, d), "wb").write(data)
    return "sha256:" + d
raw = io.BytesIO()
with tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT) as t:
    data = b"hello from a tiny image\n"
    info = tarfile.TarInfo("etc/motd"); info.size = len(data); info.mtime = 1700000000
    t.addfile(info, io.BytesIO(data))
raw = raw.getvalue()
gz = gzip.compress(raw, mtime=0)
layer = put(gz)
config = json.dumps({"architecture": "amd64", "os": "linux", "config": {"Cmd": ["/bin/sh"]},
    "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(raw).hexdigest()]}}).encode()
manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
    "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": put(config), "size": len(config)},
    "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layer, "size": len(gz)}]}).encode()
md = put(manifest)
json.dump({"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
    "digest": md, "size": len(manifest), "annotations": {"org.opencontainers.image.ref.name": "t0"}}]},
    open(os.path.join(work, "layout/index.json"), "w"))
open(os.path.join(work, "layout/oci-layout"), "w").write('{"imageLayoutVersion":"1.0.0"}')
open(os.path.join(work, "manifest.json"), "wb").write(manifest)
EOF
skopeo copy --quiet --dest-tls-verify=false "oci:$work/layout:t0" "docker://$addr/bench/tiny:t0"
python3 - "$addr" "$work/manifest.json" "$tags" <<'EOF'
import sys, urllib.request
addr, path, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
body = open(path, "rb").read()
for i in range(1, n):
    req = urllib.request.Request(f"http://{addr}/v2/bench/tiny/manifests/t{i}", data=body, method="PUT",
        headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"})
    urllib.request.urlopen(req).read()
EOF

repo=$work/repo
rm -rf "$repo"
"$bin" init --repo "$repo" --fqrn bench.example.org > /dev/null
{
    echo "version: 1"
    echo "cvmfs_repo: bench.example.org"
    echo "input:"
    if [ "${BENCH_GLOB:-0}" = 1 ]; then
        echo "  - 'docker://$addr/bench/tiny:*'"
    else
        for i in $(seq 0 $((tags - 1))); do echo "  - 'docker://$addr/bench/tiny:t$i'"; done
    fi
} > "$work/recipe.yaml"

now() { date +%s.%N; }
t0=$(now)
RUST_LOG=warn "$bin" sync --repo "$repo" --recipe "$work/recipe.yaml" > "$work/first.out"
t1=$(now)
tail -1 "$work/first.out" >&2
printf 'first pass (ingest %s tags of one image): %.2f s\n' "$tags" "$(echo "$t1 - $t0" | bc -l)"
times=()
for i in 1 2 3 4 5; do
    t0=$(now)
    RUST_LOG=warn "$bin" sync --repo "$repo" --recipe "$work/recipe.yaml" > "$work/idle.out"
    t1=$(now)
    grep -q "no new revision: 0 added, 0 updated, 0 removed, $tags unchanged, 0 failed" "$work/idle.out" \
        || { cat "$work/idle.out" >&2; echo "idle pass changed something" >&2; exit 1; }
    times+=("$(echo "$t1 - $t0" | bc -l)")
done
printf 'idle pass %s: %.3f s\n' 1 "${times[0]}" 2 "${times[1]}" 3 "${times[2]}" 4 "${times[3]}" 5 "${times[4]}"
best=$(printf '%s\n' "${times[@]}" | sort -n | head -1)
median=$(printf '%s\n' "${times[@]}" | sort -n | sed -n 3p)
printf 'sync pass with nothing to change, %s entries: median %.3f s, best %.3f s (target < 2 s)\n' \
    "$tags" "$median" "$best"
"$bin" verify --repo "$repo" >&2
