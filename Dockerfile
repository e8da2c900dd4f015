# GenTract-BIDS container: `docker run --gpus all gentract /bids /out participant`
# Not built in this workplace (no Docker engine here); kept in step with requirements.lock.
FROM python:3.11-slim-bookworm
# MRtrix3 3.0.x from Debian: the iFOD2 / SD_Stream (+ tcksift) and tckglobal baselines
# (gentract_bids.baselines.mrtrix); its Python scripts (dwi2response) run on Debian's python3.
RUN apt-get update \
 && apt-get install -y --no-install-recommends mrtrix3 \
 && rm -rf /var/lib/apt/lists/* \
 && tckgen -version >/dev/null && tckglobal -version >/dev/null && dwi2response -version >/dev/null
ENV NIPYPE_NO_ET=1 TEMPLATEFLOW_AUTOUPDATE=0 GENTRACT_CONTAINER=docker \
    MPLCONFIGDIR=/tmp/matplotlib
WORKDIR /opt/gentract
COPY requirements.lock pyproject.toml README.md ./
# From PyPI, torch==2.13.0 on x86_64 is the CUDA build: the GPU is used when present.
RUN pip install --no-cache-dir -r requirements.lock
COPY gentract_bids ./gentract_bids
RUN pip install --no-cache-dir --no-deps . \
 && python -c "import niworkflows.interfaces.bids, gentract_bids.cli.run"
ENTRYPOINT ["gentract"]
