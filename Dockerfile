# memtrain on a GPU: CUDA 12 runtime (cuBLAS, NVRTC for CuPy's kernels) + CuPy.
# Used by docker-compose.yml (docs/dashboards.md); built by nobody here: this
# machine has no Docker engine.
FROM nvidia/cuda:12.6.3-runtime-ubuntu24.04

# Ubuntu 24.04's Python is 3.12 (memtrain needs >= 3.11); a venv because the
# system interpreter is externally managed (PEP 668).
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv \
 && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/memtrain
ENV PATH=/opt/memtrain/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
# The package first, so editing docs or dashboards does not reinstall CuPy.
COPY pyproject.toml README.md ./
COPY memtrain ./memtrain
RUN pip install ".[cuda12,service]"
COPY docs ./docs
COPY dashboards ./dashboards

# Checkpoints and models go to /runs (a named volume in compose); a new volume
# takes this directory's owner, so the unprivileged user can write it.
RUN useradd --create-home --uid 10001 memtrain \
 && mkdir /runs && chown memtrain:memtrain /runs
USER memtrain

EXPOSE 8470 9464
CMD ["memtrain", "train", "docs/example-job.toml", "--metrics-host", "0.0.0.0", "--output-dir", "/runs/digits-demo"]
