#!/usr/bin/env bash
# `make container-test`: the tube-phantom demo inside the image (non-root uid, --read-only root,
# /bids read-only) and the same commands outside it (.venv); outputs are then compared.
set -euo pipefail
cd "$(dirname "$0")/.."
IMAGE=${IMAGE:-localhost/gentract:latest}
if [ "$(id -u)" != 0 ]; then
  echo "make container-test: rootful podman needs root; run: sudo make container-test" >&2; exit 1
fi
if ! podman image exists "$IMAGE"; then
  echo "make container-test: no image $IMAGE; build it first: make container" >&2; exit 1
fi
T=${CTR_TEST_DIR:-$PWD/ctr-test}
export CONTAINERS_CONF=${CONTAINERS_CONF:-$PWD/docker/containers.conf}
export NIPYPE_NO_ET=1 TEMPLATEFLOW_AUTOUPDATE=0
# --precision and --batch-size pinned: "auto" picks bfloat16 where the CPU has it, and oneDNN's
# bfloat16 kernels (AMX or AVX-512) may differ between a container and its host; SMC resamples
# within a batch, and the default batch shrinks when free memory is short (stop 39's CI: every
# GenTract tractogram differed inside/outside, not reproduced on a 2-core AMX machine)
ARGS=(--model gentract_phantom --random-seed 0 --tracker gentract sdstream
      --n-streamlines 300 --nprocs 2 --precision float32 --batch-size 512)
rm -rf "$T" && mkdir -p "$T/in" "$T/out"
chmod 777 "$T/in" "$T/out"
run() { podman run --rm --read-only -u 12345 -v "$T/bids:/bids:ro" -v "$T/in:/out" "$IMAGE" "$@"; }
echo "== version: $(podman run --rm --read-only -u 12345 "$IMAGE" --version)"
echo "== phantom (inside, written to /out, then used read-only as /bids)"
podman run --rm --read-only -u 12345 -v "$T/in:/out" --entrypoint gentract-phantom "$IMAGE" \
  /out/bids --n-subjects 1 --seed 1000 --voxel-size 4
mv "$T/in/bids" "$T/bids"
echo "== participant + group inside"
time run /bids /out participant "${ARGS[@]}"
run /bids /out group
echo "== the same commands outside"
.venv/bin/gentract-phantom "$T/bids-outside" --n-subjects 1 --seed 1000 --voxel-size 4
time .venv/bin/gentract "$T/bids" "$T/out" participant -w "$T/work" "${ARGS[@]}"
.venv/bin/gentract "$T/bids" "$T/out" group -w "$T/work"
.venv/bin/python scripts/container_compare.py "$T" docker/expected_outputs.txt
