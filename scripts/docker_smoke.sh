#!/usr/bin/env bash
# Build docker/Dockerfile.cpu and run the image for real, on a machine that reaches no image registry:
#   1. a Docker engine: the one running, else `dockerd --bridge=none --iptables=false` (overlay2) started here,
#      installed from Debian's docker.io package where missing;
#   2. a base image of Debian bookworm's own python3 (3.11), made with debootstrap + `docker import`, kept for reuse;
#   3. the CPU image on it (`docker build --network host`); pip in the build gets this machine's pip configuration
#      as a BuildKit secret (never a layer, never the repository);
#   4. the container, always with --network host and never a bridge: `photodex --help`, `photodex index` of a
#      world library the image generates (ui.demo.world), mounted read-only, with the tiny CLIP trained in
#      tests/assets, `photodex search`,
#      and `photodex serve` answering /api/v1/healthz on a loopback port.
# It stops what it started (containers; dockerd if it started it) and keeps the images as a cache: remove them
# with `docker rmi photodex:smoke photodex-smoke-base:bookworm && docker builder prune -f`.
# Exit status: 0 passed; 77 no Docker engine can run here (the reason is printed); anything else failed.
# Environment: PHOTODEX_SMOKE_IMAGE, PHOTODEX_SMOKE_BASE (tags), PHOTODEX_SMOKE_TORCH_INDEX (default: pip's own
# configured index, i.e. PyPI's CUDA build of torch; see docs/docker.md), PHOTODEX_SMOKE_STATE (logs),
# DEBIAN_MIRROR, DOCKER (client binary).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
SKIP=77
IMAGE=${PHOTODEX_SMOKE_IMAGE:-photodex:smoke}
BASE_IMAGE=${PHOTODEX_SMOKE_BASE:-photodex-smoke-base:bookworm}
TORCH_INDEX=${PHOTODEX_SMOKE_TORCH_INDEX-}
STATE=${PHOTODEX_SMOKE_STATE:-/var/tmp/photodex-docker-smoke}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
MIN_FREE_GB=16  # the image with PyPI's torch is about 8 GB, and BuildKit keeps a copy of its layers
N_PHOTOS=24
START=$(date +%s)
DOCKERD_PID=""
CONTAINERS=()
WORK=""

log() { printf '[docker-smoke %4ss] %s\n' "$(( $(date +%s) - START ))" "$*"; }
skip() { log "SKIPPED, no Docker engine here: $*"; exit "$SKIP"; }
fail() { log "FAILED: $*"; exit 1; }

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  for c in "${CONTAINERS[@]}"; do "$DOCKER" rm -f -v "$c" >/dev/null 2>&1 || true; done
  if [ -n "$DOCKERD_PID" ]; then
    log "stopping the dockerd this script started (pid $DOCKERD_PID)"
    kill "$DOCKERD_PID" 2>/dev/null || true
    for _ in $(seq 30); do kill -0 "$DOCKERD_PID" 2>/dev/null || break; sleep 1; done
    kill -0 "$DOCKERD_PID" 2>/dev/null && kill -9 "$DOCKERD_PID" 2>/dev/null || true
  fi
  # --one-file-system: never descend into a /proc or /sys that a failed debootstrap left mounted
  [ -n "$WORK" ] && rm -rf --one-file-system "$WORK"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 143' INT TERM

# --- 1. the engine --------------------------------------------------------------------------------------------
# A client that builds with BuildKit (RUN --mount, --secret): one with the buildx plugin, or a client older than
# Docker 23 (Debian's docker.io), whose built-in BuildKit client a newer one dropped.
pick_client() {
  local c major
  for c in ${DOCKER:-} docker /usr/bin/docker; do
    command -v "$c" >/dev/null 2>&1 || continue
    if "$c" buildx version >/dev/null 2>&1; then DOCKER=$c; BUILD=("$c" buildx build --load); return 0; fi
    major=$("$c" version --format '{{.Client.Version}}' 2>/dev/null | cut -d. -f1 || true)
    if [[ $major =~ ^[0-9]+$ ]] && [ "$major" -lt 23 ]; then
      DOCKER=$c; BUILD=(env DOCKER_BUILDKIT=1 "$c" build); return 0
    fi
  done
  return 1
}

if ! command -v dockerd >/dev/null 2>&1 || ! pick_client; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    log "installing Debian's docker.io and debootstrap"
    export DEBIAN_FRONTEND=noninteractive
    { apt-get install -y -qq --no-install-recommends docker.io debootstrap >/dev/null 2>&1 \
      || { apt-get update -qq && apt-get install -y -qq --no-install-recommends docker.io debootstrap >/dev/null; }; } \
      || skip "apt-get could not install docker.io"
  fi
fi
pick_client || skip "no docker client that builds with BuildKit (buildx plugin, or a client older than 23)"
mkdir -p "$STATE"
if ! "$DOCKER" info >/dev/null 2>&1; then
  command -v dockerd >/dev/null 2>&1 || skip "no engine answers and there is no dockerd to start"
  [ "$(id -u)" = 0 ] || skip "no engine answers and starting dockerd needs root"
  log "starting dockerd (--bridge=none --iptables=false, overlay2); its log: $STATE/dockerd.log"
  dockerd --bridge=none --iptables=false --ip-masq=false --storage-driver=overlay2 >"$STATE/dockerd.log" 2>&1 &
  DOCKERD_PID=$!
  for _ in $(seq 60); do
    "$DOCKER" info >/dev/null 2>&1 && break
    if ! kill -0 "$DOCKERD_PID" 2>/dev/null; then
      DOCKERD_PID=""
      tail -n 5 "$STATE/dockerd.log" | sed 's/^/  dockerd: /'
      skip "dockerd exited at start (log above)"
    fi
    sleep 1
  done
  "$DOCKER" info >/dev/null 2>&1 || skip "dockerd did not answer within 60 s"
fi
log "engine $("$DOCKER" version --format '{{.Server.Version}}'), client $DOCKER ($("$DOCKER" version --format '{{.Client.Version}}'))"
DATA_ROOT=$("$DOCKER" info --format '{{.DockerRootDir}}')
free_gb=$(( $(df -Pk "$DATA_ROOT" | awk 'NR==2 {print $4}') / 1048576 ))
[ "$free_gb" -ge "$MIN_FREE_GB" ] || skip "only $free_gb GB free under $DATA_ROOT (needs $MIN_FREE_GB)"
WORK=$(mktemp -d /var/tmp/photodex-smoke.XXXXXX)

# --- 2. the base image ----------------------------------------------------------------------------------------
if "$DOCKER" image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
  log "base image $BASE_IMAGE: reused"
else
  command -v debootstrap >/dev/null 2>&1 || fail "debootstrap is missing (apt-get install debootstrap)"
  log "base image $BASE_IMAGE: debootstrap bookworm from $MIRROR (log: $STATE/debootstrap.log)"
  debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
    bookworm "$WORK/rootfs" "$MIRROR" >"$STATE/debootstrap.log" 2>&1 \
    || { tail -n 20 "$STATE/debootstrap.log"; fail "debootstrap"; }
  rm -rf "$WORK/rootfs"/var/cache/apt/archives/*.deb "$WORK/rootfs"/var/lib/apt/lists/*
  tar -C "$WORK/rootfs" -c . | "$DOCKER" import --change 'ENV LANG=C.UTF-8' - "$BASE_IMAGE" >/dev/null
  rm -rf --one-file-system "$WORK/rootfs"
  log "base image $BASE_IMAGE: $("$DOCKER" run --rm --network host "$BASE_IMAGE" python3 --version)"
fi

# --- 3. the CPU image -----------------------------------------------------------------------------------------
# This machine's pip settings as a pip.conf for the build, kept to what a build can use: index URLs over the
# network, trusted hosts, timeouts, proxy, and the CA bundle (`cert`, its own secret). Paths on this disk
# (find-links folders, file:// indexes, constraint files) mean nothing inside the build and are left out.
SECRETS=()
PYTHON=${PYTHON:-python3}
if "$PYTHON" -m pip --version >/dev/null 2>&1; then
  mkdir -m 700 "$WORK/pip"
  "$PYTHON" -m pip config list 2>/dev/null | "$PYTHON" -c '
import os, re, shutil, sys
out = sys.argv[1]
settings = {}
for line in sys.stdin:  # global.cert=... (files) then :env:.cert=... (PIP_* variables, which win)
    m = re.match(r"^(?:[\w-]+|:env:)\.([\w-]+)=(.*)$", line.strip())
    if m:
        value = m.group(2)
        settings[m.group(1).replace("_", "-")] = value[1:-1] if value[:1] in "\"'\''" else value
keep = {}
for key in ("index-url", "extra-index-url", "find-links"):
    urls = [u for u in settings.get(key, "").split() if u.startswith(("http://", "https://"))]
    if urls:
        keep[key] = " ".join(urls)
for key in ("trusted-host", "proxy", "timeout", "default-timeout", "retries"):
    if settings.get(key):
        keep["timeout" if key == "default-timeout" else key] = settings[key]
cert = settings.get("cert")
if cert and os.path.isfile(cert):
    shutil.copyfile(cert, os.path.join(out, "cert.pem"))
    keep["cert"] = "/run/secrets/pipcert"
with open(os.path.join(out, "pip.conf"), "w") as f:
    f.write("[global]\n" + "".join(f"{k} = {v}\n" for k, v in keep.items()))
print(" ".join(sorted(keep)) or "(nothing)")
' "$WORK/pip" >"$WORK/pip/keys"
  log "pip settings given to the build as a secret: $(cat "$WORK/pip/keys")"
  SECRETS+=(--secret "id=pipconf,src=$WORK/pip/pip.conf")
  [ -f "$WORK/pip/cert.pem" ] && SECRETS+=(--secret "id=pipcert,src=$WORK/pip/cert.pem")
fi
torch_from=${TORCH_INDEX:-the index pip is configured with}
log "building $IMAGE on $BASE_IMAGE, torch from $torch_from (log: $STATE/build.log)"
build_start=$(date +%s)
previous=$("$DOCKER" image inspect --format '{{.Id}}' "$IMAGE" 2>/dev/null || true)
"${BUILD[@]}" --progress plain --network host -f docker/Dockerfile.cpu -t "$IMAGE" \
  --build-arg "BASE=$BASE_IMAGE" --build-arg "TORCH_INDEX=$TORCH_INDEX" "${SECRETS[@]}" . >"$STATE/build.log" 2>&1 \
  || { tail -n 40 "$STATE/build.log"; fail "docker build"; }
size_mb=$(( $("$DOCKER" image inspect --format '{{.Size}}' "$IMAGE") / 1000000 ))
# the image this tag named before, now untagged: gone, or every rebuild of the torch layer keeps GBs more
if [ -n "$previous" ] && [ "$previous" != "$("$DOCKER" image inspect --format '{{.Id}}' "$IMAGE")" ]; then
  "$DOCKER" rmi "$previous" >/dev/null 2>&1 || true
fi
log "built $IMAGE in $(( $(date +%s) - build_start )) s: $size_mb MB"
# the secret stays out of the image: no pip.conf or CA file left in it, and no layer's command holds the settings
"$DOCKER" run --rm --network host --entrypoint sh "$IMAGE" -c 'test ! -s /etc/pip.conf && test ! -e /run/secrets/pipcert' \
  || fail "the pip secret reached the image"
if [ -s "$WORK/pip/pip.conf" ] && "$DOCKER" history --no-trunc --format '{{.CreatedBy}}' "$IMAGE" \
     | grep -qF -f <(sed -n 's/^[a-z-]* = //p' "$WORK/pip/pip.conf"); then
  fail "the pip settings reached the image's history"
fi
rm -rf "$WORK/pip"

# --- 4. the container -----------------------------------------------------------------------------------------
RUN=("$DOCKER" run --rm --network host -e HF_HUB_OFFLINE=1 -e TRANSFORMERS_OFFLINE=1)
"${RUN[@]}" "$IMAGE" --help | grep -q "Search, tag and question a photo library" || fail "photodex --help"
log "photodex --help: ok"

mkdir -p "$WORK/library" "$WORK/data"
"${RUN[@]}" -v "$WORK:/out" --entrypoint python "$IMAGE" -c "
import json
from ui.demo.world import write_library
pairs = write_library('/out/library', $N_PHOTOS, 7)
json.dump({str(p.relative_to('/out/library')): [s.colour, s.shape] for p, s in pairs}, open('/out/truth.json', 'w'))
"
MOUNTS=(-v "$WORK/library:/photos:ro" -v "$WORK/data:/data" -v "$ROOT/tests/assets/tiny_clip:/models/tiny_clip:ro")
"${RUN[@]}" "${MOUNTS[@]}" "$IMAGE" index /photos --model local-dir:/models/tiny_clip --json >"$WORK/index.json" \
  || fail "photodex index"
"$PYTHON" - "$WORK/index.json" "$N_PHOTOS" <<'PY' || fail "photodex index: not every photo was indexed"
import json, sys
report = json.load(open(sys.argv[1]))
assert report["collection"]["indexed"] == int(sys.argv[2]) and report["encode"]["errors"] == 0, report
PY
log "photodex index of a read-only library of $N_PHOTOS photos: ok"

"${RUN[@]}" "${MOUNTS[@]}" "$IMAGE" search "a red circle" --json >"$WORK/search.json" || fail "photodex search"
"$PYTHON" - "$WORK/search.json" "$WORK/truth.json" <<'PY' || fail "photodex search: the top hit is not a red circle"
import json, sys
hits, truth = json.load(open(sys.argv[1])), json.load(open(sys.argv[2]))
top = hits[0]["paths"][0]
assert top.startswith("/photos/") and truth[top[len("/photos/"):]] == ["red", "circle"], (top, hits[:3])
PY
log "photodex search 'a red circle': the top hit is a red circle"

PORT=$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
NAME=photodex-smoke-serve-$$
CONTAINERS+=("$NAME")
"$DOCKER" run -d --name "$NAME" --network host -e HF_HUB_OFFLINE=1 -e TRANSFORMERS_OFFLINE=1 "${MOUNTS[@]}" \
  "$IMAGE" serve --host 127.0.0.1 --port "$PORT" >/dev/null
healthy=""
for _ in $(seq 120); do
  if "$PYTHON" - "http://127.0.0.1:$PORT/api/v1/healthz" >"$WORK/healthz.json" 2>/dev/null <<'PY'
import sys, urllib.request
print(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())
PY
  then healthy=1; break; fi
  [ "$("$DOCKER" inspect --format '{{.State.Running}}' "$NAME")" = true ] || break
  sleep 1
done
[ -n "$healthy" ] || { "$DOCKER" logs "$NAME" 2>&1 | tail -n 20; fail "photodex serve: no answer on /api/v1/healthz"; }
log "photodex serve on 127.0.0.1:$PORT: /api/v1/healthz answered $(head -c 200 "$WORK/healthz.json")"
"$DOCKER" stop -t 20 "$NAME" >/dev/null

log "PASSED in $(( $(date +%s) - START )) s; image $IMAGE: $size_mb MB"
