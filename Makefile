# shiftwatch. The two set-up commands are `make demo` and `make test`; each installs what it
# needs (the Python packages for training and cross-checks, the ONNX Runtime library).

PYTHON ?= python3
CARGO ?= cargo
VENV := .venv
PY := $(VENV)/bin/python
ORT_VERSION := 1.31.1
ORT_DIR := vendor/onnxruntime
ORT_LIB := $(ORT_DIR)/libonnxruntime.so.$(ORT_VERSION)
ORT_GPU_DIR := vendor/onnxruntime-gpu
ORT_GPU_LIB := $(ORT_GPU_DIR)/libonnxruntime.so.$(ORT_VERSION)
CUDART_DIR := vendor/cuda-runtime
# The CUDA image's pins; test-cuda takes libcudart from the same nvidia-cuda-runtime release.
CUDA_REQUIREMENTS := deploy/docker/cuda-requirements.txt
CARGO_TARGET := $(or $(CARGO_TARGET_DIR),target)
# Where the binaries and tests find the runtime (see src/model/runtime.rs for the search order).
export ORT_DYLIB_PATH ?= $(abspath $(ORT_LIB))

.PHONY: compare estimates-table soak peer-venv monitor-peers-venv report-compare fuzz demo test test-rust test-python lint fmt venv runtime model reference bench clean-runtime \
	check-deploy deploy-tools test-cuda runtime-gpu test-label-studio label-studio

## demo: build, start the sidecar on the bundled model, replay the bundled traffic, summarise
demo: runtime venv
	$(CARGO) build --release --locked
	$(PY) scripts/demo.py $(DEMO_ARGS)

## test: every test, Rust and Python (the command CI runs)
test: test-rust test-python

test-rust: runtime venv
	$(CARGO) test --locked --all-targets

test-python: venv
	$(PY) -m pytest training/tests -q

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --locked --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

## test-label-studio: the relabeling loop against a real Label Studio (slow: Label Studio takes
## a minute or more to start, so it is not part of `make test`; CI runs both)
test-label-studio: runtime venv label-studio
	$(CARGO) build --locked --bin shiftwatch
	$(PY) tests/label_studio_e2e.py --binary $(CARGO_TARGET)/debug/shiftwatch \
		--label-studio $(LS_VENV)/bin/label-studio

## label-studio: the pinned Label Studio in its own environment (.venv-label-studio), installed
## only when the pinned versions are not already there. sentry-sdk is pinned too: label-studio
## 1.23.2 asks for sentry-sdk>=2.16.0, and 3.0.0 (the newest on PyPI today) refuses the option it starts
## with (`Unknown option 'send_default_pii'`), so Label Studio would not start.
LS_VENV := .venv-label-studio
LABEL_STUDIO_VERSION := 1.23.2
LS_SENTRY_VERSION := 2.76.0
label-studio:
	@if ! $(LS_VENV)/bin/python -c "import importlib.metadata as m, sys; \
		sys.exit(m.version('label-studio') != '$(LABEL_STUDIO_VERSION)' \
			or m.version('sentry-sdk') != '$(LS_SENTRY_VERSION)')" 2>/dev/null; then \
		$(PYTHON) -m venv $(LS_VENV) && \
		$(LS_VENV)/bin/python -m pip install --quiet --disable-pip-version-check \
			label-studio==$(LABEL_STUDIO_VERSION) sentry-sdk==$(LS_SENTRY_VERSION); \
	fi

## venv: the Python environment (training, demo driver, cross-checks)
venv: $(VENV)/.installed
$(VENV)/.installed: training/requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r training/requirements.txt
	touch $@

## peer-venv: the Python peer of `make compare` (benches/peers/requirements.txt, pinned)
PEER_VENV := .venv-peer
peer-venv: $(PEER_VENV)/.installed
$(PEER_VENV)/.installed: benches/peers/requirements.txt
	$(PYTHON) -m venv $(PEER_VENV)
	$(PEER_VENV)/bin/python -m pip install --quiet --disable-pip-version-check -r benches/peers/requirements.txt
	touch $@

## compare: shiftwatch against the Python peer and bare onnxruntime, one run (README "Performance")
compare: runtime venv peer-venv
	$(CARGO) build --release --locked --example http_ceiling
	$(CARGO) build --release --locked
	$(PY) scripts/compare.py $(COMPARE_ARGS)

## monitor-peers-venv: Evidently and NannyML for `make report-compare`
## (benches/peers/monitors-requirements.txt, pinned) in .venv-monitors
MONITORS_VENV := .venv-monitors
monitor-peers-venv: $(MONITORS_VENV)/.installed
$(MONITORS_VENV)/.installed: benches/peers/monitors-requirements.txt
	$(PYTHON) -m venv $(MONITORS_VENV)
	$(MONITORS_VENV)/bin/python -m pip install --quiet --disable-pip-version-check \
		-r benches/peers/monitors-requirements.txt
	touch $@

## report-compare: `shiftwatch report` (release) beside Evidently and NannyML on the same
## 100,000-prediction log, one run each under /usr/bin/time -v (README "At scale")
report-compare: runtime venv monitor-peers-venv
	$(CARGO) build --release --locked
	$(PY) scripts/report_compare.py $(REPORT_COMPARE_ARGS)

## estimates-table: every label-free accuracy estimate against the truth on the bundled traffic
## and on shifts the correctness model's fit never saw, both bundled models, with the targets
## checked (README "Accuracy without labels")
estimates-table: runtime venv
	$(CARGO) build --release --locked
	$(PY) scripts/estimates_table.py --check $(ESTIMATES_ARGS)

## soak: 1,000,000 classify requests with everything on, RSS sampled every second, every row
## checked in Parquet (README "Performance"; needs ab: apt-get install apache2-utils)
soak: runtime venv
	$(CARGO) build --release --locked
	$(PY) scripts/soak.py $(SOAK_ARGS)

## runtime: libonnxruntime.so from the onnxruntime wheel on PyPI, into vendor/onnxruntime/
runtime: $(ORT_LIB)
$(ORT_LIB):
	rm -rf $(ORT_DIR)/wheel && mkdir -p $(ORT_DIR)/wheel
	$(PYTHON) -m pip download --quiet --disable-pip-version-check --no-deps \
		--only-binary=:all: --platform manylinux_2_28_$(shell uname -m) --python-version 3.11 \
		onnxruntime==$(ORT_VERSION) -d $(ORT_DIR)/wheel
	$(PYTHON) scripts/unpack_runtime.py $(ORT_DIR)/wheel $(ORT_DIR)
	rm -rf $(ORT_DIR)/wheel
	test -f $@

clean-runtime:
	rm -rf $(ORT_DIR) $(ORT_GPU_DIR) $(CUDART_DIR)

## check-deploy: hadolint on deploy/docker/Dockerfile*, the Kubernetes manifests rendered and
## validated against the API schemas offline, their config accepted by the real binary
check-deploy: deploy-tools
	$(CARGO) build --locked --bin shiftwatch
	PATH="$(abspath $(VENV))/bin:$$PATH" $(PY) deploy/check.py
	SHIFTWATCH_BIN=$(CARGO_TARGET)/debug/shiftwatch $(PY) -m pytest deploy/tests/test_deploy.py -q

deploy-tools: $(VENV)/.deploy-installed
$(VENV)/.deploy-installed: deploy/requirements.txt $(VENV)/.installed
	$(PY) -m pip install --quiet --disable-pip-version-check -r deploy/requirements.txt
	touch $@

## test-cuda: the CUDA provider with the real onnxruntime-gpu library on a machine without a GPU
## (downloads the 256 MB onnxruntime-gpu wheel and the 2.5 MB nvidia-cuda-runtime wheel once)
test-cuda: runtime-gpu venv
	$(CARGO) build --locked --bin shiftwatch
	SHIFTWATCH_BIN=$(CARGO_TARGET)/debug/shiftwatch ORT_GPU_LIB=$(abspath $(ORT_GPU_LIB)) \
		ORT_CPU_LIB=$(abspath $(ORT_LIB)) CUDART_DIR=$(abspath $(CUDART_DIR)) \
		$(PY) -m pytest deploy/tests/test_cuda_provider.py -q

## runtime-gpu: ONNX Runtime's GPU build with its CUDA provider libraries, into
## vendor/onnxruntime-gpu/, and the CUDA runtime (libcudart) alone into vendor/cuda-runtime/
runtime-gpu: $(ORT_GPU_LIB) $(CUDART_DIR)/libcudart.so.13
$(ORT_GPU_LIB):
	rm -rf $(ORT_GPU_DIR)/wheel && mkdir -p $(ORT_GPU_DIR)/wheel
	$(PYTHON) -m pip download --quiet --disable-pip-version-check --no-deps \
		--only-binary=:all: --platform manylinux_2_28_x86_64 --python-version 3.12 \
		onnxruntime-gpu==$(ORT_VERSION) -d $(ORT_GPU_DIR)/wheel
	$(PYTHON) scripts/unpack_runtime.py --provider cuda $(ORT_GPU_DIR)/wheel $(ORT_GPU_DIR)
	rm -rf $(ORT_GPU_DIR)/wheel
	test -f $@
$(CUDART_DIR)/libcudart.so.13: $(CUDA_REQUIREMENTS)
	rm -rf $(CUDART_DIR) && mkdir -p $(CUDART_DIR)/wheel
	$(PYTHON) -m pip download --quiet --disable-pip-version-check --no-deps \
		--only-binary=:all: --platform manylinux_2_17_x86_64 --python-version 3.12 \
		$$(grep '^nvidia-cuda-runtime==' $(CUDA_REQUIREMENTS)) -d $(CUDART_DIR)/wheel
	cd $(CUDART_DIR) && $(PYTHON) -m zipfile -e wheel/*.whl wheel/x \
		&& mv wheel/x/nvidia/cu13/lib/libcudart.so.13 . && rm -rf wheel
	test -f $@

## model: regenerate the bundled models, images and fixtures (see training/README.md)
model: venv
	$(PY) training/build.py
	$(PY) training/make_stats_fixture.py
	$(PY) tests/data/make_statistics_fixture.py
	$(MAKE) reference

## reference: the bundled models' reference profiles, from the bundled validation set
reference: runtime
	$(CARGO) build --release --locked
	$(CARGO_TARGET)/release/shiftwatch reference --images data/reference \
		--labels data/reference/labels.csv --out models/digits.reference.json
	SHIFTWATCH__MODEL__PATH=models/digits-overconfident.onnx \
		$(CARGO_TARGET)/release/shiftwatch reference --images data/reference \
		--labels data/reference/labels.csv --out models/digits-overconfident.reference.json

## bench: the benchmarks behind the README's performance section
bench: runtime venv
	$(CARGO) bench --locked --bench pipeline
	$(CARGO) bench --locked --bench log_writer
	$(CARGO) bench --locked --bench monitor
	$(CARGO) bench --locked --bench detection
	$(CARGO) build --release --locked
	$(PY) scripts/loadtest.py

## fuzz: every cargo-fuzz target for FUZZ_SECONDS each (default 600), from the committed seeds;
## a crash is written to fuzz/artifacts/<target>/ (commit it to fuzz/regressions/<target>/ once
## fixed: `make test` replays that folder). cargo-fuzz needs nightly flags: RUSTC_BOOTSTRAP=1
## lets the stable toolchain take them. Release build with AddressSanitizer (-O: without debug
## assertions, one 20-minute build on 2 cores; the replay in `make test` runs with them).
FUZZ_SECONDS ?= 600
FUZZ_TARGETS ?= image v2_request config wal_segment
fuzz:
	command -v cargo-fuzz >/dev/null || $(CARGO) install cargo-fuzz --locked --version 0.13.2
	set -e; for t in $(FUZZ_TARGETS); do \
		mkdir -p fuzz/corpus/$$t && cp -n fuzz/seeds/$$t/* fuzz/corpus/$$t/; \
		RUSTC_BOOTSTRAP=1 CARGO_TARGET_DIR=$(abspath fuzz/target) cargo fuzz run -O $$t fuzz/corpus/$$t -- \
			-max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=2048 -timeout=10 -print_final_stats=1; \
	done
