#!/usr/bin/env bash
# `make container`: build the gentract OCI image with rootful podman on a locally made Debian
# bookworm base (mmdebstrap), no registry needed. Installs what it needs (Debian hosts).
set -euo pipefail
cd "$(dirname "$0")/.."
IMAGE=${IMAGE:-localhost/gentract:latest}
TORCH=${TORCH:-cpu}
# The CPU torch wheel goes into the build context: TORCH_WHEEL=FILE, else the one of the lock's
# version in this machine's pip wheel folders (`pip config list`: find-links); TORCH_WHEEL=index
# lets the build download it from the PyTorch CPU index instead. Checked first: nothing heavy
# runs before it.
version_torch=$(sed -n 's/^torch==//p' requirements.lock)
if [ "$TORCH" = cpu ] && [ "${TORCH_WHEEL:-}" != index ]; then
  wheel=${TORCH_WHEEL:-}
  if [ -z "$wheel" ]; then
    py=python3 && [ -x .venv/bin/python ] && py=.venv/bin/python  # pip is there after make venv
    links=$("$py" -m pip config list 2>/dev/null | sed -n "s/.*find-links='\(.*\)'/\1/p")
    for d in $links; do
      for f in "$d"/torch-"$version_torch"+cpu-cp311-*.whl; do [ -f "$f" ] && wheel=$f; done
    done
  fi
  if [ ! -f "$wheel" ]; then
    echo "make container: no CPU torch wheel torch-$version_torch+cpu-cp311-*.whl found" \
      "(pip find-links: ${links:-none}). Set TORCH_WHEEL=/path/to/that.whl," \
      "or TORCH_WHEEL=index to download it from download.pytorch.org." >&2
    exit 1
  fi
  echo "== torch wheel: $wheel"
fi
if [ "$(id -u)" != 0 ]; then
  echo "make container: rootful podman needs root; run: sudo make container" >&2; exit 1
fi
rm -f docker/wheels/*.whl
if [ -n "${wheel:-}" ]; then cp "$wheel" docker/wheels/; fi
# A Debian host makes its own base from its apt sources; others (CI) pull the public one.
SOURCES=/etc/apt/sources.list.d/debian.sources
if [ -f "$SOURCES" ]; then DEFAULT_BASE=localhost/debian:bookworm
else DEFAULT_BASE=docker.io/library/python:3.11-slim-bookworm; fi
BASE=${BASE:-$DEFAULT_BASE}
export CONTAINERS_CONF=${CONTAINERS_CONF:-$PWD/docker/containers.conf}
# The tools, from the distribution (skipped when all are there; apt-get is a no-op then too).
PKGS=(mmdebstrap podman buildah runc charliecloud squashfuse)
need=()
for c in mmdebstrap podman buildah runc ch-run squashfuse; do
  command -v "$c" >/dev/null || need+=("$c")
done
if ((${#need[@]})); then
  echo "== installing ${PKGS[*]} (missing: ${need[*]})"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${PKGS[@]}"
fi
if [ "$BASE" = localhost/debian:bookworm ] && ! podman image exists "$BASE"; then
  tmp=$(mktemp -d)
  mmdebstrap --variant=minbase bookworm "$tmp/base.tar" "$SOURCES"
  podman import "$tmp/base.tar" "$BASE"
  rm -rf "$tmp"
fi
secret=()
[ -f /etc/ssl/certs/ca-certificates.crt ] && \
  secret=(--secret id=cacert,src=/etc/ssl/certs/ca-certificates.crt)
version=$(sed -n 's/^__version__ = "\(.*\)"/\1/p' gentract_bids/__init__.py)
source_sha=$(find pyproject.toml README.md gentract_bids -type f ! -name '*.pyc' -print0 \
  | sort -z | xargs -0 sha256sum | sha256sum | cut -c1-16)
podman build "${secret[@]}" --build-arg BASE="$BASE" --build-arg TORCH="$TORCH" \
  --build-arg VERSION="$version" --build-arg SOURCE_SHA="$source_sha" -t "$IMAGE" .
podman image ls "$IMAGE"
