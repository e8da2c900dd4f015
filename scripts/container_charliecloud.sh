#!/usr/bin/env bash
# `make container-charliecloud`: the built image run unprivileged with Charliecloud, as a cluster
# user without root: ch-convert from podman, then ch-run as the non-root user chuser.
set -euo pipefail
cd "$(dirname "$0")/.."
IMAGE=${IMAGE:-localhost/gentract:latest}
D=${CH_TEST_DIR:-/tmp/gentract-ch}
export CONTAINERS_CONF=${CONTAINERS_CONF:-$PWD/docker/containers.conf}
id chuser >/dev/null 2>&1 || useradd -m chuser
rm -rf "$D" && mkdir -p "$D"
ch-convert -i podman "$IMAGE" "$D/img"
chown -R chuser "$D"
# ch-run keeps the host's environment: give it the image's settings and a writable HOME.
ENVS=(--set-env=HOME=/tmp --set-env=MPLCONFIGDIR=/tmp/matplotlib --set-env=NIPYPE_NO_ET=1
      --set-env=TEMPLATEFLOW_AUTOUPDATE=0 --set-env=GENTRACT_CONTAINER=charliecloud)
as() { runuser -u chuser -- "$@"; }
as ch-run "${ENVS[@]}" "$D/img" -- /opt/venv/bin/gentract --version
as ch-run "${ENVS[@]}" -b "$D:/mnt/0" "$D/img" -- /opt/venv/bin/gentract-phantom /mnt/0/bids \
  --n-subjects 1 --seed 1000 --voxel-size 4
time as ch-run "${ENVS[@]}" -b "$D:/mnt/0" "$D/img" -- /opt/venv/bin/gentract /mnt/0/bids \
  /mnt/0/out participant -w /mnt/0/work --model gentract_phantom --random-seed 0 \
  --tracker gentract --n-streamlines 300 --nprocs 2
ls "$D"/out/sub-01/dwi/sub-01_space-dwi_model-gentract_streamlines.trx
