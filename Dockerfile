# qsm-bids BIDS App image: Debian's Python 3.11 in a virtual environment, wheels only,
# the same install as the README (pip install .). Runs under --read-only with a tmpfs /tmp
# and under --user of any uid: everything that writes goes to /tmp.
FROM debian:bookworm-slim

ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3=3.11.* python3-venv=3.11.* \
    && rm -rf /var/lib/apt/lists/*

ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PYTHONNOUSERSITE=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /opt/qsm-bids
COPY pyproject.toml README.md version run.py ./
COPY qsm_bids ./qsm_bids
RUN python3 -m venv /opt/venv \
    && pip install --only-binary=:all: . \
    && QSM_BIDS_CACHE=/opt/qsm-bids/cache python -c "from qsm_bids.atlas import default_atlas; default_atlas()"

# Read-only root file system and arbitrary uids: HOME and every cache point to /tmp.
ENV HOME=/tmp \
    TMPDIR=/tmp \
    XDG_CACHE_HOME=/tmp/.cache \
    MPLCONFIGDIR=/tmp/matplotlib \
    DENO_DIR=/tmp/deno \
    QSM_BIDS_CACHE=/opt/qsm-bids/cache \
    QSM_BIDS_CONTAINER=docker

WORKDIR /tmp
ENTRYPOINT ["qsm-bids"]
