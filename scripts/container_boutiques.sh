#!/usr/bin/env bash
# `make container-boutiques`: `bosh exec launch` of the descriptor's example invocation against
# the image `make container` built with podman. bosh runs `docker`: a `docker` shim that calls
# podman is put first in PATH (DOCKER=docker keeps a real Docker, with the image loaded into it).
# The phantom is made by the image itself.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
IMAGE=${IMAGE:-localhost/gentract:latest}
D=${BOSH_TEST_DIR:-/tmp/gentract-bosh}
export CONTAINERS_CONF=${CONTAINERS_CONF:-$PWD/docker/containers.conf}
rm -rf "$D" && mkdir -p "$D/shim"
if [ "${DOCKER:-podman}" = podman ]; then
  printf '#!/bin/sh\nexec podman "$@"\n' > "$D/shim/docker" && chmod +x "$D/shim/docker"
  export PATH=$D/shim:$PATH
fi
podman run --rm -u "$(id -u)" -v "$D:/d" --entrypoint gentract-phantom "$IMAGE" /d/bids \
  --n-subjects 1 --seed 1000 --voxel-size 4
# bosh mounts the launch directory at its own path; the image's user (uid 999) writes out/ there.
chmod -R a+rwX "$D"
cd "$D"
rc=0
"$ROOT/.venv/bin/bosh" exec launch --no-pull --skip-data-collection -s \
  "$ROOT/boutiques/gentract.json" "$ROOT/boutiques/example_invocation.json" || rc=$?
echo "bosh exec launch: exit $rc"
ls out/sub-01/dwi/sub-01_space-dwi_model-gentract_streamlines.trx
exit $rc
