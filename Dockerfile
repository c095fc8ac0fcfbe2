# tuwen (图问) container image.
#
#   docker build -t tuwen .                       the CPU image: embedded OCR stack, no PyTorch (the default)
#   docker build --target gpu -t tuwen:gpu .      CUDA PyTorch from PyTorch's index + the `gpu` extra
#       --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128   (match `nvidia-smi`'s CUDA version)
#       --build-arg EXTRAS=gpu,quant                                          (bitsandbytes for 4-/8-bit)
#   make image / make image-offline               the same with docker or podman; offline: see the Makefile
#
# Stages: python (the base) → build (a venv in /opt/tuwen) → gpu-build (adds torch) ; service (user,
# entrypoint, config) → gpu | runtime. `runtime` is last, so a plain build makes it; `--target runtime`
# never runs the gpu stages: BuildKit (Docker ≥ 23's default, and compose's) and buildah/podman build only
# the stages a target needs (Docker's legacy builder would build them all). The gpu image needs internet
# at build time (several GB of CUDA wheels) and the NVIDIA container toolkit to run.

# Any Debian-based image with python3 ≥ 3.11 and its venv module; `make image-offline` passes one made
# from Debian packages with debootstrap. Python wheels must match its Python version.
ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS python
ENV LANG=C.UTF-8 \
    PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# --- build: tuwen and its runtime dependencies in a venv ------------------------------------------------
FROM python AS build
ARG BASE_IMAGE
# Empty: pip builds tuwen from the source and fetches dependencies from the package index. Set to a folder
# of wheels in the build context (`make image-offline` passes build/wheelhouse/wheels, made by
# `make wheelhouse`): nothing is fetched, the tuwen wheel there is installed.
ARG WHEELHOUSE=
COPY . /src
RUN python3 -m venv /opt/tuwen \
 && if [ -n "$WHEELHOUSE" ]; then \
      want=$(cat "/src/$WHEELHOUSE/../python-version") \
      && have=$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])') \
      && if [ "$want" != "$have" ]; then \
           echo "the wheelhouse is for Python $want but $BASE_IMAGE has Python $have" >&2; exit 1; \
         fi \
      && /opt/tuwen/bin/pip install --no-cache-dir --no-index --find-links "/src/$WHEELHOUSE" tuwen; \
    else \
      /opt/tuwen/bin/pip install --no-cache-dir /src; \
    fi \
 && /opt/tuwen/bin/tuwen --version

# --- gpu-build: CUDA PyTorch (PyTorch's own index; PyPI's default build may not match the driver) ---------
FROM build AS gpu-build
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126
ARG TORCH_SPEC=torch
ARG EXTRAS=gpu
# torch first from PyTorch's index; the extra then finds it installed and takes only transformers,
# accelerate and tokenizers from the package index. No torchvision: tuwen does not need it.
RUN /opt/tuwen/bin/pip install --no-cache-dir "$TORCH_SPEC" --index-url "$TORCH_INDEX_URL" \
 && /opt/tuwen/bin/pip install --no-cache-dir "/src[$EXTRAS]"

# --- service: what every runtime image shares ---------------------------------------------------------
FROM python AS service
# uid/gid 1000 by default; the entrypoint re-numbers them from USERMAP_UID/USERMAP_GID at start. The home
# is not /data: `usermod -u` re-owns the home recursively, and /data may hold a NAS share.
RUN groupadd --system --gid 1000 tuwen \
 && useradd --system --uid 1000 --gid tuwen --home-dir /home/tuwen --create-home \
      --shell /usr/sbin/nologin tuwen
COPY docker/config.toml /etc/tuwen/config.toml
COPY docker/entrypoint.sh /usr/local/bin/tuwen-entrypoint
COPY docker/tuwen.sh /usr/local/bin/tuwen
# (not COPY --chmod: the classic builder and older buildah lack it; a Windows checkout loses the x bit)
RUN chmod 0755 /usr/local/bin/tuwen-entrypoint /usr/local/bin/tuwen
ENV HOME=/home/tuwen \
    MPLCONFIGDIR=/tmp/matplotlib \
    USERMAP_UID=1000 \
    USERMAP_GID=1000
# Database, uploads, thumbnails, reports and the watched /data/inbox; /data/config.toml if you add one.
VOLUME ["/data"]
WORKDIR /data
EXPOSE 8080
# tuwen's one stop path (finish or re-queue the job in hand, close the database) runs on SIGTERM; give it
# time: `docker stop -t 90`, compose's stop_grace_period.
STOPSIGNAL SIGTERM
ENTRYPOINT ["tuwen-entrypoint"]
CMD ["serve"]

# --- gpu: GLM-4.6V-Flash through transformers ([model] backend = "transformers") -------------------------
FROM service AS gpu
COPY --from=gpu-build /opt/tuwen /opt/tuwen
# Hub downloads land in the volume; a model folder mounted read-only (compose's gpu profile) needs none.
# The backend is not set here: an image variable would override /data/config.toml (compose sets it).
# NVIDIA_DRIVER_CAPABILITIES: the NVIDIA container toolkit mounts only the `utility` driver libraries when it is
# unset (CUDA images set it; this one is a plain Debian Python image), and CUDA needs `compute`.
ENV HF_HOME=/data/huggingface \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
# Loading ~20 GB of weights takes minutes: /health is 503 until the model is ready.
HEALTHCHECK --interval=30s --timeout=10s --start-period=10m --retries=3 CMD ["tuwen", "health"]

# --- runtime: the default CPU image, embedded OCR (RapidOCR + onnxruntime), no PyTorch --------------------
FROM service AS runtime
COPY --from=build /opt/tuwen /opt/tuwen
# `tuwen health` GETs /health on the configured port (no curl in a slim image); 0 = healthy.
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 CMD ["tuwen", "health"]
