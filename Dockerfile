# qsm-bids BIDS App image: Debian's Python 3.11 in a virtual environment, wheels only, the same
# install as the README (pip install --only-binary=:all: .). Runs under --read-only with a tmpfs
# /tmp and under --user of any uid: everything that writes goes to /tmp. Build: docker build .
# (ci/container.sh builds and runs it with podman; docs/container.md).

# Build stage: install, compile the exact max-TFCE kernel (C, loaded with ctypes) beside the
# installed package, and build the default atlas from the installed wheels into a cache.
FROM debian:bookworm-slim AS build
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3=3.11.* python3-venv=3.11.* gcc=4:12.* libc6-dev=2.36-* \
    && rm -rf /var/lib/apt/lists/*
ENV PATH=/opt/venv/bin:$PATH PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONNOUSERSITE=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
# The dependencies first, in their own layer: a source change does not download them again.
COPY pyproject.toml ./
RUN python3 -m venv /opt/venv \
    && python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > /tmp/requirements.txt \
    && pip install --only-binary=:all: -r /tmp/requirements.txt
COPY README.md version run.py ./
COPY qsm_bids ./qsm_bids
# python -P: without it, -m run here imports /src/qsm_bids and the kernel is built into /src, which
# the runtime stage does not copy (the image then fell back to the slower tfce package).
RUN pip install --only-binary=:all: . \
    && python -P -m qsm_bids.group._tfce_kernel \
    && QSM_BIDS_CACHE=/opt/qsm-bids/cache python -P -c "from qsm_bids.atlas import default_atlas; default_atlas()" \
    && python -P -m compileall -q /opt/venv/lib/python3.11/site-packages/qsm_bids \
    && find /opt/venv -name tests -type d -path '*/site-packages/*' -prune -exec rm -rf {} + \
    && rm -rf /opt/venv/lib/python3.11/site-packages/pip /opt/venv/bin/pip*

# Runtime stage: no compiler, nothing writable but /tmp.
FROM debian:bookworm-slim
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3=3.11.* \
    && rm -rf /var/lib/apt/lists/* /var/cache/debconf/*-old /var/log/*
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
    QSM_BIDS_TFCE_KERNEL=compiled \
    QSM_BIDS_CONTAINER=docker
# The image must carry the compiled kernel: load it here (no compiler in this stage) or fail the build.
RUN python -P -m qsm_bids.group._tfce_kernel --check
WORKDIR /tmp
ENTRYPOINT ["qsm-bids"]
