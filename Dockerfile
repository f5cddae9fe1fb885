# qsm-bids BIDS App image: Debian's Python 3.11 in a virtual environment, wheels only, the same
# install as the README (pip install --only-binary=:all: .). Runs under --read-only with a tmpfs
# /tmp and under --user of any uid: everything that writes goes to /tmp.

# Build stage: install, compile the exact max-TFCE kernel (C, loaded with ctypes) beside the
# package, and build the default atlas from the installed wheels into a cache.
FROM debian:bookworm-slim AS build
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3=3.11.* python3-venv=3.11.* gcc=4:12.* libc6-dev=2.36-* \
    && rm -rf /var/lib/apt/lists/*
ENV PATH=/opt/venv/bin:$PATH PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONNOUSERSITE=1
WORKDIR /src
COPY pyproject.toml README.md version run.py ./
COPY qsm_bids ./qsm_bids
RUN python3 -m venv /opt/venv \
    && pip install --only-binary=:all: . \
    && python -m qsm_bids.group._tfce_kernel \
    && QSM_BIDS_CACHE=/opt/qsm-bids/cache python -c "from qsm_bids.atlas import default_atlas; default_atlas()"

# Runtime stage: no compiler, nothing writable but /tmp.
FROM debian:bookworm-slim
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3=3.11.* \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /opt/venv /opt/venv
COPY --from=build /opt/qsm-bids/cache /opt/qsm-bids/cache
COPY version /opt/qsm-bids/version
ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PYTHONNOUSERSITE=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    TMPDIR=/tmp \
    XDG_CACHE_HOME=/tmp/.cache \
    MPLCONFIGDIR=/tmp/matplotlib \
    DENO_DIR=/tmp/deno \
    QSM_BIDS_CACHE=/opt/qsm-bids/cache \
    QSM_BIDS_CONTAINER=docker
WORKDIR /tmp
ENTRYPOINT ["qsm-bids"]
