#!/usr/bin/env bash
# Build the bids_qnet Docker image with buildah (no Docker engine needed), measure it, and run
# it as its non-root user with a read-only root and no network: the smoke test, then one demo
# participant with the dataset mounted read-only. Needs root, buildah, skopeo and (for
# --base local) debootstrap:  apt-get install buildah skopeo debootstrap
#
#   scripts/build_container.sh                       # local Debian base, weights as available
#   scripts/build_container.sh --base docker --weights download    # python:3.11.7-slim-bookworm
#   scripts/build_container.sh --torch-index-url https://download.pytorch.org/whl/cpu
#   scripts/build_container.sh --no-run              # build and measure only
#
# Options:
#   --base local|docker|IMAGE  local (default): build localhost/bids_qnet-base:bookworm from
#                              Debian packages with debootstrap when it is missing (python3
#                              3.11 from bookworm, security updates applied); docker: the
#                              Dockerfile's default (python:3.11.7-slim-bookworm from Docker
#                              Hub); anything else: that image.
#   --rebuild-base             build the local base again even if it exists.
#   --weights auto|download|context|none   auto (default): context when
#                              docker/weights/resnet18-f37072fd.pth exists, else download when
#                              download.pytorch.org answers, else none (said loudly).
#   --torch-index-url URL      extra index for torch/torchvision (the CPU-only variant).
#   --pip-cert FILE            CA bundle for pip behind a TLS-intercepting proxy (default: the
#                              PIP_CERT variable, if it names a file); bind-mounted into the
#                              build steps, never stored in the image.
#   --tag NAME                 image name (default bidsqnet/bids_qnet:<version>).
#   --out DIR                  logs, report and demo data (default build/container).
#   --no-run                   skip the runs; --no-compressed-size skips the gzip export.
#
# Writes DIR/report.md (sizes, layers, times, what was verified) and DIR/report.json; exits
# non-zero when the build or a check fails.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

BASE=local
REBUILD_BASE=0
WEIGHTS=auto
TORCH_INDEX_URL=
PIP_CERT_FILE=${PIP_CERT:-}
TAG=
OUT=build/container
RUN=1
COMPRESSED=1
LOCAL_BASE=localhost/bids_qnet-base:bookworm
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
WEIGHTS_FILE=docker/weights/resnet18-f37072fd.pth
WEIGHTS_URL=https://download.pytorch.org/models/resnet18-f37072fd.pth

while [ $# -gt 0 ]; do
  case $1 in
    --base) BASE=$2; shift 2 ;;
    --rebuild-base) REBUILD_BASE=1; shift ;;
    --weights) WEIGHTS=$2; shift 2 ;;
    --torch-index-url) TORCH_INDEX_URL=$2; shift 2 ;;
    --pip-cert) PIP_CERT_FILE=$2; shift 2 ;;
    --tag) TAG=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    --no-run) RUN=0; shift ;;
    --no-compressed-size) COMPRESSED=0; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown option $1 (see --help)" >&2; exit 64 ;;
  esac
done

die() { echo "build_container: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "run as root (buildah, debootstrap and the read-only run need it)"
for tool in buildah skopeo python3 unshare; do
  command -v "$tool" >/dev/null || die "$tool is missing (apt-get install buildah skopeo)"
done

VERSION=$(sed -n 's/^__version__ = "\(.*\)"/\1/p' bids_qnet/__init__.py)
[ -n "$VERSION" ] || die "cannot read __version__ from bids_qnet/__init__.py"
TAG=${TAG:-bidsqnet/bids_qnet:$VERSION}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
REPORT=$OUT/report.json
echo '{}' > "$REPORT"
LOG=$OUT/build.log
: > "$LOG"

now() { date +%s.%N; }
since() { python3 -c "import sys; print(round($(now) - float(sys.argv[1]), 1))" "$1"; }
# record KEY VALUE-AS-JSON: add a field to report.json.
record() {
  python3 - "$REPORT" "$1" "$2" <<'PY'
import json, sys
path, key, value = sys.argv[1:]
data = json.load(open(path))
data[key] = json.loads(value)
json.dump(data, open(path, "w"), indent=2)
PY
}
jstr() { python3 -c 'import json, sys; print(json.dumps(sys.argv[1]))' "$1"; }

record date "$(jstr "$(date -u +%Y-%m-%dT%H:%M:%SZ)")"
record host "$(jstr "$(uname -srm), $(nproc) cores, buildah $(buildah --version | awk '{print $3}')")"
record commit "$(jstr "$(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD 2>/dev/null || echo '+changes')")"

# ------------------------------------------------------------------------------ base image
build_local_base() {
  command -v debootstrap >/dev/null || die "debootstrap is missing (apt-get install debootstrap)"
  echo "== building $LOCAL_BASE from Debian bookworm packages ($MIRROR)"
  local ctr mnt
  ctr=$(buildah from scratch)
  mnt=$(buildah mount "$ctr")
  debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    bookworm "$mnt" "$MIRROR" >>"$LOG" 2>&1 || die "debootstrap failed: see $LOG"
  cat >"$mnt/etc/apt/sources.list" <<EOF
deb $MIRROR bookworm main
deb $MIRROR bookworm-updates main
deb $SECURITY_MIRROR bookworm-security main
EOF
  # As Debian's own slim images: no manuals, documentation (but the copyright files) or
  # translations, now or for packages installed later.
  cat >"$mnt/etc/dpkg/dpkg.cfg.d/slim" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
EOF
  buildah run --isolation chroot "$ctr" -- sh -ec '
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get upgrade -y -qq
    apt-get clean
    rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/log/apt/* /var/log/dpkg.log
    find /usr/share/doc -mindepth 1 -not -name copyright -not -type d -delete
    find /usr/share/doc -mindepth 1 -type d -empty -delete
    rm -rf /usr/share/man/* /usr/share/info/* /usr/share/locale/*/
    : > /etc/resolv.conf' >>"$LOG" 2>&1 || die "apt-get upgrade in the base failed: see $LOG"
  local python
  python=$(buildah run --isolation chroot "$ctr" -- python3 --version | awk '{print $2}')
  buildah config --env LANG=C.UTF-8 --cmd python3 \
    --label org.opencontainers.image.title=bids_qnet-base \
    --label "org.opencontainers.image.description=Debian 12 (bookworm) minbase with python3 $python and python3-venv, made by scripts/build_container.sh" \
    "$ctr"
  buildah umount "$ctr" >/dev/null
  buildah commit --rm --quiet "$ctr" "$LOCAL_BASE" >/dev/null
}

BASE_ARG=()
case $BASE in
  local)
    if [ "$REBUILD_BASE" = 1 ] || ! buildah inspect --type image "$LOCAL_BASE" >/dev/null 2>&1; then
      t0=$(now)
      build_local_base
      record base_build_seconds "$(since "$t0")"
    else
      echo "== using the existing $LOCAL_BASE (--rebuild-base to make it again)"
    fi
    BASE_IMAGE=$LOCAL_BASE
    BASE_ARG=(--pull=never --build-arg "BASE_IMAGE=$LOCAL_BASE") ;;
  docker)
    # The Dockerfile's default, spelled out for buildah (no short-name resolution needed).
    BASE_IMAGE=docker.io/library/$(sed -n 's/^ARG BASE_IMAGE=//p' Dockerfile)
    BASE_ARG=(--build-arg "BASE_IMAGE=$BASE_IMAGE") ;;
  *)
    BASE_IMAGE=$BASE
    BASE_ARG=(--build-arg "BASE_IMAGE=$BASE") ;;
esac
record base_image "$(jstr "$BASE_IMAGE")"

# ------------------------------------------------------------------------------ weights
if [ "$WEIGHTS" = auto ]; then
  if [ -f "$WEIGHTS_FILE" ]; then
    WEIGHTS=context
  elif python3 -c "import sys, urllib.request as u; u.urlopen(u.Request(sys.argv[1], method='HEAD'), timeout=15)" \
      "$WEIGHTS_URL" >/dev/null 2>&1; then
    WEIGHTS=download
  else
    WEIGHTS=none
    echo "!! $WEIGHTS_URL is unreachable and $WEIGHTS_FILE is absent: building WITHOUT the"
    echo "!! ImageNet weights (--embedding-weights imagenet will fail in this image)"
  fi
fi
record weights "$(jstr "$WEIGHTS")"

# ------------------------------------------------------------------------------ build
BUILD=(buildah build --isolation chroot --layers --jobs 1 -f Dockerfile -t "$TAG"
       "${BASE_ARG[@]}" --build-arg "WEIGHTS=$WEIGHTS")
if [ -n "$TORCH_INDEX_URL" ]; then
  BUILD+=(--build-arg "TORCH_INDEX_URL=$TORCH_INDEX_URL")
fi
if [ -n "$PIP_CERT_FILE" ]; then
  [ -f "$PIP_CERT_FILE" ] || die "--pip-cert $PIP_CERT_FILE is not a file"
  BUILD+=(-v "$(readlink -f "$PIP_CERT_FILE"):/run/bids_qnet-pip-cert.pem:ro"
          --build-arg PIP_CERT=/run/bids_qnet-pip-cert.pem)
fi
BUILD+=("$ROOT")
record build_command "$(jstr "${BUILD[*]}")"
echo "== ${BUILD[*]}"
echo "   (log: $LOG)"
t0=$(now)
if ! nice -n 10 "${BUILD[@]}" >>"$LOG" 2>&1; then
  tail -40 "$LOG"
  die "buildah build failed after $(since "$t0") s: see $LOG"
fi
record build_seconds "$(since "$t0")"
record build_steps_from_cache "$(grep -c '^--> Using cache' "$LOG" || true)"
echo "   built $TAG in $(python3 -c "import json; print(json.load(open('$REPORT'))['build_seconds'])") s"

# ------------------------------------------------------------------------------ sizes
IMAGE_ID=$(buildah inspect --type image --format '{{.FromImageID}}' "$TAG")
record image_id "$(jstr "$IMAGE_ID")"
GRAPHROOT=$(buildah info --format '{{.store.GraphRoot}}' 2>/dev/null || echo /var/lib/containers/storage)
buildah inspect --type image "$TAG" > "$OUT/inspect.json"
python3 - "$OUT/inspect.json" "$GRAPHROOT" "$REPORT" <<'PY'
import json, re, sys
inspect, graphroot, report = sys.argv[1:]
config = json.load(open(inspect))["OCIv1"]
layers = {}
try:
    for layer in json.load(open(f"{graphroot}/overlay-layers/layers.json")):
        layers[layer.get("diff-digest")] = layer.get("diff-size")
except OSError:
    pass
diff_ids = iter(config["rootfs"]["diff_ids"])
rows = []
for entry in config.get("history", []):
    if entry.get("empty_layer"):
        continue
    digest = next(diff_ids, None)
    command = entry.get("created_by", "")
    # "|5 A=1 B=2 /bin/sh -c CMD" (build arguments, then the step): keep the step.
    command = re.sub(r"^(\|\d+ .*?)?/bin/sh -c (#\(nop\) )?", "", command)
    command = re.sub(r"(file|dir|multi):[0-9a-f]{64}", "…", command)
    rows.append({"diff_id": digest, "bytes": layers.get(digest), "created_by": " ".join(command.split())[:110]})
data = json.load(open(report))
data["layers"] = rows
if all(r["bytes"] is not None for r in rows):
    data["uncompressed_bytes"] = sum(r["bytes"] for r in rows)
json.dump(data, open(report, "w"), indent=2)
PY

if [ "$COMPRESSED" = 1 ]; then
  echo "== compressed size: skopeo copy to an OCI layout with gzip layers"
  EXPORT=$OUT/oci
  rm -rf "$EXPORT"
  t0=$(now)
  skopeo copy --quiet --dest-compress-format gzip "containers-storage:$IMAGE_ID" "oci:$EXPORT:latest" >>"$LOG" 2>&1
  record export_seconds "$(since "$t0")"
  python3 - "$EXPORT" "$REPORT" <<'PY'
import json, sys
from pathlib import Path
export, report = Path(sys.argv[1]), sys.argv[2]
index = json.loads((export / "index.json").read_text())
digest = index["manifests"][0]["digest"].split(":")[1]
manifest = json.loads((export / "blobs" / "sha256" / digest).read_text())
data = json.load(open(report))
sizes = [layer["size"] for layer in manifest["layers"]]
data["compressed_bytes"] = sum(sizes) + manifest["config"]["size"]
data["compressed_media_types"] = sorted({layer["mediaType"] for layer in manifest["layers"]})
for row, size in zip(data["layers"], sizes):
    row["gzip_bytes"] = size
json.dump(data, open(report, "w"), indent=2)
PY
  rm -rf "$EXPORT"
fi

# ------------------------------------------------------------------------------ runs
# ro_run UID MOUNTS COMMAND...: run COMMAND in the image as UID, like
#   docker run --read-only --tmpfs /tmp --network none -u UID -v MOUNTS IMAGE COMMAND
# The image is mounted through a buildah working container; in new mount, PID, UTS and network
# namespaces its root is bind-mounted read-only, /tmp is a fresh tmpfs, /dev holds only
# null, zero, full, random, urandom and a tmpfs shm, /proc and /sys (read-only) are mounted,
# MOUNTS ("HOST:CONTAINER:ro|rw" separated by spaces) are bind-mounted, and COMMAND runs in a
# chroot with the image's environment only, after setpriv drops to UID (no supplementary
# groups, no capabilities, no new privileges).
ro_run() {
  local uid=$1 mounts=$2
  shift 2
  unshare --mount --pid --uts --net --fork --propagation private \
    env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin MNT="$MNT" RUN_UID="$uid" MOUNTS="$mounts" \
        WORKDIR="$WORKDIR" ENVFILE="$OUT/image.env" \
    bash -c '
      set -euo pipefail
      ip link set lo up 2>/dev/null || true
      hostname bids-qnet 2>/dev/null || true
      mount --bind "$MNT" "$MNT"
      mount -o remount,bind,ro "$MNT"
      mount -t tmpfs -o mode=1777,nosuid,nodev,size=8g tmpfs "$MNT/tmp"
      mount -t tmpfs -o mode=755,nosuid tmpfs "$MNT/dev"
      for node in null zero full random urandom; do
        touch "$MNT/dev/$node"
        mount --bind "/dev/$node" "$MNT/dev/$node"
      done
      mkdir "$MNT/dev/shm" && mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$MNT/dev/shm"
      ln -s /proc/self/fd "$MNT/dev/fd"
      mount -t proc -o nosuid,nodev,noexec proc "$MNT/proc"
      mount -t sysfs -o ro,nosuid,nodev,noexec sysfs "$MNT/sys" 2>/dev/null || true
      for spec in $MOUNTS; do
        IFS=: read -r src dst mode <<<"$spec"
        mount --bind "$src" "$MNT$dst"
        [ "$mode" = ro ] && mount -o remount,bind,ro "$MNT$dst"
      done
      mapfile -t image_env <"$ENVFILE"
      exec chroot "$MNT" setpriv --reuid="$RUN_UID" --regid="$RUN_UID" --clear-groups \
        --inh-caps=-all --bounding-set=-all --no-new-privs \
        env -i "${image_env[@]}" sh -c "cd \"\$1\" && shift && exec \"\$@\"" sh "$WORKDIR" "$@"
    ' bash "$@"
}

if [ "$RUN" = 1 ]; then
  CTR=$(buildah from --pull=never --quiet "$TAG")
  cleanup() { buildah umount "$CTR" >/dev/null 2>&1 || true; buildah rm "$CTR" >/dev/null 2>&1 || true; }
  trap cleanup EXIT
  MNT=$(buildah mount "$CTR")
  # Mount points for the bind mounts, in the working container's own layer (as Docker makes
  # them for -v): the image is not changed.
  mkdir -p "$MNT/data" "$MNT/out"
  buildah inspect --type image --format '{{range .OCIv1.Config.Env}}{{println .}}{{end}}' "$TAG" \
    | sed '/^$/d' > "$OUT/image.env"
  WORKDIR=$(buildah inspect --type image --format '{{.OCIv1.Config.WorkingDir}}' "$TAG")
  WORKDIR=${WORKDIR:-/}
  IMAGE_USER=$(buildah inspect --type image --format '{{.OCIv1.Config.User}}' "$TAG")
  RUN_UID=$(awk -F: -v u="$IMAGE_USER" '$1 == u || $3 == u {print $3}' "$MNT/etc/passwd")
  [ -n "$RUN_UID" ] && [ "$RUN_UID" != 0 ] || die "image user '$IMAGE_USER' is root or unknown"
  ENTRYPOINT=$(buildah inspect --type image --format '{{range .OCIv1.Config.Entrypoint}}{{.}} {{end}}' "$TAG")
  record run_user "$(jstr "$IMAGE_USER (uid $RUN_UID)")"
  record entrypoint "$(jstr "$ENTRYPOINT")"
  checks=()
  check() { checks+=("$1"); echo "   ok: $1"; }

  echo "== 1. smoke test with buildah run (the image's own user, environment and working dir)"
  t0=$(now)
  buildah run --isolation chroot "$CTR" -- sh /opt/bids_qnet/smoke_test.sh > "$OUT/smoke_buildah_run.log" 2>&1 \
    || { cat "$OUT/smoke_buildah_run.log"; die "smoke test failed under buildah run"; }
  record smoke_buildah_run_seconds "$(since "$t0")"
  grep -q "uid=$RUN_UID($IMAGE_USER)" "$OUT/smoke_buildah_run.log" \
    || die "buildah run did not run as $IMAGE_USER"
  check "buildah run --isolation chroot: smoke test passes as $IMAGE_USER (uid $RUN_UID)"

  echo "== 2. smoke test, read-only root, tmpfs /tmp, no network, uid $RUN_UID"
  t0=$(now)
  ro_run "$RUN_UID" "" sh /opt/bids_qnet/smoke_test.sh > "$OUT/smoke.log" 2>&1 \
    || { cat "$OUT/smoke.log"; die "smoke test failed (read-only root)"; }
  record smoke_seconds "$(since "$t0")"
  cat "$OUT/smoke.log"
  check "read-only root: smoke test passes as uid $RUN_UID"
  ro_run 4242 "" sh /opt/bids_qnet/smoke_test.sh > "$OUT/smoke_uid4242.log" 2>&1 \
    || { cat "$OUT/smoke_uid4242.log"; die "smoke test failed as uid 4242"; }
  check "read-only root: smoke test passes as uid 4242 (no passwd entry, like docker run -u)"
  ro_run "$RUN_UID" "" bids_qnet --bids-exec-spec > "$OUT/descriptor.json" 2>"$OUT/descriptor.err" \
    || die "bids_qnet --bids-exec-spec failed: $(cat "$OUT/descriptor.err")"
  cmp -s "$OUT/descriptor.json" descriptor.json || die "--bids-exec-spec differs from descriptor.json"
  check "bids_qnet --bids-exec-spec in the image prints descriptor.json byte for byte"

  # The root is read-only for root too (EROFS, not a permission error); nothing resolves or
  # connects; only /tmp is writable.
  probe='import errno, os, socket
print("uid", os.getuid())
for path in ("/probe", "/opt/venv/probe", "/opt/torch/probe", "/usr/probe"):
    try:
        open(path, "w")
    except OSError as error:
        assert error.errno in (errno.EROFS, errno.EACCES), (path, error)
        print(path, "not writable:", os.strerror(error.errno))
    else:
        raise SystemExit(f"{path} is writable")
open("/tmp/probe", "w").write("ok")
print("/tmp writable")
for host in ("pypi.org", "deb.debian.org", "151.101.0.223", "1.1.1.1"):
    try:
        socket.create_connection((host, 443), timeout=5)
    except OSError as error:
        print(host, "unreachable:", error)
    else:
        raise SystemExit(f"{host} reachable")'
  ro_run 0 "" python -c "$probe" > "$OUT/readonly_root.log" 2>&1 \
    || { cat "$OUT/readonly_root.log"; die "read-only probe as root failed"; }
  grep -q "/usr/probe not writable: Read-only file system" "$OUT/readonly_root.log" \
    || die "the root is not read-only: $(cat "$OUT/readonly_root.log")"
  ro_run "$RUN_UID" "" python -c "$probe" >> "$OUT/readonly_root.log" 2>&1 \
    || { cat "$OUT/readonly_root.log"; die "read-only probe as uid $RUN_UID failed"; }
  cat "$OUT/readonly_root.log"
  check "root file system read-only (EROFS even for uid 0), /tmp writable, no network"

  echo "== 3. demo dataset (bids_qnet-demo, 2 participants, 2 mm), written by the container"
  DEMO=$OUT/demo
  rm -rf "$DEMO"
  mkdir -p "$DEMO/out"
  chown "$RUN_UID:$RUN_UID" "$DEMO" "$DEMO/out"
  t0=$(now)
  ro_run "$RUN_UID" "$DEMO:/out:rw" \
    bids_qnet-demo /out/bids --participants 2 --resolution 2 > "$OUT/demo_data.log" 2>&1 \
    || { cat "$OUT/demo_data.log"; die "bids_qnet-demo failed"; }
  record demo_dataset_seconds "$(since "$t0")"
  check "bids_qnet-demo wrote $(find "$DEMO/bids" -name '*.nii.gz' | wc -l) NIfTI files"

  echo "== 4. participant level, participant 01, dataset read-only, through the entry point"
  chown -R root:root "$DEMO/bids"
  chmod -R a+rX,go-w "$DEMO/bids"
  before=$(cd "$DEMO/bids" && find . -type f -exec sha256sum {} + | sort | sha256sum)
  # shellcheck disable=SC2086
  PARTICIPANT=($ENTRYPOINT /data /out participant --participant-label 01
               --registration-profile fast --embedding-weights random
               --template-resolution 2 --nprocs 1)
  record demo_command "$(jstr "${PARTICIPANT[*]}")"
  t0=$(now)
  ro_run "$RUN_UID" "$DEMO/bids:/data:ro $DEMO/out:/out:rw" "${PARTICIPANT[@]}" \
    > "$OUT/demo_participant.log" 2>&1 \
    || { tail -60 "$OUT/demo_participant.log"; die "participant level failed"; }
  record demo_participant_seconds "$(since "$t0")"
  after=$(cd "$DEMO/bids" && find . -type f -exec sha256sum {} + | sort | sha256sum)
  [ "$before" = "$after" ] || die "the BIDS dataset changed"
  [ -s "$DEMO/out/sub-01.html" ] || die "no sub-01.html"
  [ -s "$DEMO/out/dataset_description.json" ] || die "no dataset_description.json"
  ls "$DEMO/out/sub-01/anat/" | grep -q "space-MNI152NLin2009cAsym_res-2_desc-bgcrop_Chimap.nii.gz" \
    || die "no cropped Chimap in $DEMO/out/sub-01/anat"
  [ ! -e "$DEMO/out/sub-02" ] || die "participant 02 was processed although not selected"
  owners=$(find "$DEMO/out" -not -uid "$RUN_UID" | wc -l)
  [ "$owners" = 0 ] || die "$owners output files not owned by uid $RUN_UID"
  record demo_outputs "$(find "$DEMO/out" -type f | wc -l)"
  grep -i "valid" "$OUT/demo_participant.log" | head -3 || true
  check "participant 01: exit 0, $(find "$DEMO/out" -type f | wc -l) output files owned by uid $RUN_UID, sub-01.html, BIDS dataset unchanged"
  record checks "$(python3 -c 'import json, sys; print(json.dumps(sys.argv[1:]))' "${checks[@]}")"
fi

# ------------------------------------------------------------------------------ report
python3 - "$REPORT" "$OUT/report.md" "$TAG" <<'PY'
import json, sys
data, md, tag = json.load(open(sys.argv[1])), sys.argv[2], sys.argv[3]
def size(n):
    if n is None:
        return "?"
    return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"
lines = [f"# {tag}: build report ({data['date']})", "",
         f"- host: {data['host']}; commit {data['commit']}",
         f"- base image: {data['base_image']}; weights: {data['weights']}",
         f"- build: {data.get('build_seconds')} s ({data.get('build_steps_from_cache', 0)} steps from cache)"
         + (f" (local base made in {data['base_build_seconds']} s first)" if "base_build_seconds" in data else ""),
         f"- size: {size(data.get('uncompressed_bytes'))} uncompressed, "
         f"{size(data.get('compressed_bytes'))} compressed (gzip layers)"]
for key, label in (("smoke_buildah_run_seconds", "smoke test under buildah run"),
                   ("smoke_seconds", "smoke test, read-only root"),
                   ("demo_dataset_seconds", "demo dataset (2 participants, 2 mm)"),
                   ("demo_participant_seconds", "participant level, 1 participant")):
    if key in data:
        lines.append(f"- {label}: {data[key]} s")
lines += ["", "| layer | uncompressed | gzip | step |", "|---|---|---|---|"]
for i, row in enumerate(data.get("layers", []), 1):
    step = row["created_by"][:100].replace("|", "\\|")
    lines.append(f"| {i} | {size(row['bytes'])} | {size(row.get('gzip_bytes'))} | `{step}` |")
if data.get("checks"):
    lines += ["", "Verified:", *[f"- {c}" for c in data["checks"]]]
open(md, "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PY
echo "== report: $OUT/report.md, $OUT/report.json"
