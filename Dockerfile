# graft: multi-stage build. CPU (default):
#   docker build -t graft .
# CUDA (the onnxruntime-gpu library on a CUDA 13 + cuDNN 9 runtime image):
#   docker build -t graft:cuda --build-arg VARIANT=gpu \
#     --build-arg RUNTIME_IMAGE=nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04 .
# Without registry access (`make docker-test` does this): local base images and a binary and
# ONNX Runtime built outside the image, taken from the build context (BuildKit skips the
# stages not used):
#   DOCKER_BUILDKIT=1 docker build --build-arg RUNTIME_IMAGE=local/debian:bookworm-slim \
#     --build-arg BINARY=prebuilt --build-arg ORT=prebuilt -t graft .
# Model files are not in the image: mount a folder holding them next to the manifests,
#   docker run -p 8080:8080 -v "$PWD/models:/opt/graft/models:ro" -v graft-data:/var/lib/graft/data graft
# Roles (README, "Scaling out"): `docker run … graft serve --role api|worker`.

ARG VARIANT=cpu
ARG BUILD_IMAGE=rust:1.95-bookworm
ARG PYTHON_IMAGE=python:3.12-slim
ARG RUNTIME_IMAGE=debian:bookworm-slim
ARG ORT_VERSION=1.31.1
# Where the binary comes from: `build` (compiled here) or `prebuilt` (target/release/graft of
# the build context, built on a glibc no newer than the runtime image's).
ARG BINARY=build
# Where ONNX Runtime comes from: `fetch` (its wheel from PyPI) or `prebuilt` (.ort/VARIANT/
# of the build context, as `make ort` leaves it).
ARG ORT=fetch

FROM ${BUILD_IMAGE} AS build
# libjpeg-turbo's headers and static library: JPEG decoding links it in (build.rs).
RUN apt-get update \
 && apt-get install -y --no-install-recommends libjpeg62-turbo-dev pkg-config \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs ./
COPY proto proto
COPY csrc csrc
COPY src src
COPY migrations migrations
COPY console console
RUN cargo build --release --locked --bin graft

FROM scratch AS binary-build
COPY --from=build /src/target/release/graft /graft

FROM scratch AS binary-prebuilt
COPY target/release/graft /graft

FROM ${PYTHON_IMAGE} AS ort-fetch
ARG VARIANT
ARG ORT_VERSION
COPY scripts/fetch_ort.py /fetch_ort.py
RUN package=$([ "$VARIANT" = gpu ] && echo onnxruntime-gpu || echo onnxruntime) \
 && python /fetch_ort.py --package "$package" --version "$ORT_VERSION" --dest /ort

FROM scratch AS ort-prebuilt
ARG VARIANT
COPY .ort/${VARIANT}/ /ort/

FROM binary-${BINARY} AS binary
FROM ort-${ORT} AS onnxruntime

FROM ${RUNTIME_IMAGE}
ARG ORT_VERSION
# curl (the health check) and CA certificates (HTTPS to S3 and model URLs), unless the base
# image has them already.
RUN if ! command -v curl >/dev/null || [ ! -s /etc/ssl/certs/ca-certificates.crt ]; then \
      apt-get update \
      && apt-get install -y --no-install-recommends ca-certificates curl \
      && rm -rf /var/lib/apt/lists/*; \
    fi \
 && useradd --system --uid 10001 --home-dir /var/lib/graft --create-home graft
COPY --from=binary /graft /usr/local/bin/graft
COPY --from=onnxruntime /ort/ /usr/local/lib/graft/
COPY models/*.toml models/*.tsv /opt/graft/models/
ENV ORT_DYLIB_PATH=/usr/local/lib/graft/libonnxruntime.so.${ORT_VERSION} \
    GRAFT_MODEL_DIR=/opt/graft/models \
    GRAFT_DATA_DIR=/var/lib/graft/data \
    GRAFT_LISTEN=0.0.0.0:8080
RUN mkdir -p /var/lib/graft/data && chown graft:graft /var/lib/graft/data
USER graft
WORKDIR /var/lib/graft
# The SQLite database and the blob store (images, features, heads); DATABASE_URL moves the
# rows to PostgreSQL, GRAFT_BLOB_URL the blobs to S3.
VOLUME /var/lib/graft/data
EXPOSE 8080
HEALTHCHECK --interval=15s --timeout=3s --start-period=120s --retries=3 \
  CMD curl -fsS http://127.0.0.1:8080/readyz >/dev/null || exit 1
ENTRYPOINT ["graft"]
CMD ["serve"]
