#!/usr/bin/env bash
# `make container`: build the gentract OCI image with rootful podman on a locally made Debian
# bookworm base (mmdebstrap), no registry needed. Installs what it needs (Debian hosts).
set -euo pipefail
cd "$(dirname "$0")/.."
IMAGE=${IMAGE:-localhost/gentract:latest}
# A Debian host makes its own base from its apt sources; others (CI) pull the public one.
SOURCES=/etc/apt/sources.list.d/debian.sources
if [ -f "$SOURCES" ]; then DEFAULT_BASE=localhost/debian:bookworm
else DEFAULT_BASE=docker.io/library/python:3.11-slim-bookworm; fi
BASE=${BASE:-$DEFAULT_BASE}
TORCH=${TORCH:-cpu}
export CONTAINERS_CONF=${CONTAINERS_CONF:-$PWD/docker/containers.conf}
need=()
for c in podman buildah runc mmdebstrap ch-run squashfuse; do
  command -v "$c" >/dev/null || need+=("$c")
done
if ((${#need[@]})); then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mmdebstrap podman buildah runc \
    charliecloud squashfuse
fi
if [ "$BASE" = localhost/debian:bookworm ] && ! podman image exists "$BASE"; then
  tmp=$(mktemp -d)
  mmdebstrap --variant=minbase bookworm "$tmp/base.tar" "$SOURCES"
  podman import "$tmp/base.tar" "$BASE"
  rm -rf "$tmp"
fi
# The CPU torch wheel of this machine's pip wheel folder, if any, goes into the build context.
links=$(python3 -m pip config list 2>/dev/null | sed -n "s/.*find-links='\(.*\)'/\1/p" | sort -u)
rm -f docker/wheels/*.whl
for d in $links; do
  cp "$d"/torch-2.13.0+cpu-*.whl docker/wheels/ 2>/dev/null || true
done
secret=()
[ -f /etc/ssl/certs/ca-certificates.crt ] && \
  secret=(--secret id=cacert,src=/etc/ssl/certs/ca-certificates.crt)
version=$(sed -n 's/^__version__ = "\(.*\)"/\1/p' gentract_bids/__init__.py)
podman build "${secret[@]}" --build-arg BASE="$BASE" --build-arg TORCH="$TORCH" \
  --build-arg VERSION="$version" -t "$IMAGE" .
podman image ls "$IMAGE"
