# Two commands matter: `make demo` and `make test`. Both install what they need first.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# torch: the CPU build without an NVIDIA driver, the CUDA build with one; `make install TORCH_VARIANT=cpu|cuda`
# overrides the guess (docs/INSTALL.md). The stamp names the variant, so switching reinstalls torch.
TORCH_VERSION := 2.13.0
NVIDIA_DRIVER_FILE ?= /proc/driver/nvidia/version
TORCH_VARIANT ?= $(shell if [ -e $(NVIDIA_DRIVER_FILE) ] || command -v nvidia-smi >/dev/null 2>&1; then echo cuda; else echo cpu; fi)
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
TORCH_CUDA_INDEX ?= https://pypi.org/simple
STAMP := $(VENV)/.installed-torch-$(TORCH_VARIANT)
export PYOPENGL_PLATFORM ?= egl
export DO_NOT_TRACK := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS ?= 120
# Debian packages for headless OpenGL (EGL through Mesa's llvmpipe; OSMesa as the fallback), and
# chromium: the report test opens the HTML report in a real headless browser (tests/test_report.py).
SYSTEM_PACKAGES := libegl1 libegl-mesa0 libgl1-mesa-dri libgles2 libosmesa6 libglu1-mesa chromium

.PHONY: install system-deps demo test test-fast test-slow bench clean

install: $(STAMP)

system-deps:
	@missing=""; for p in $(SYSTEM_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing system packages:$$missing"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO="sudo"; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing; \
	fi

# torch first, the variant chosen above; the project's torch range then keeps it. cpu: the +cpu wheel from the
# configured indexes, else PyTorch's CPU index. cuda: PyPI's Linux wheel (the CUDA 13.0 build, ~3.5 GB with its
# nvidia-* libraries); `===` excludes a +cpu wheel that a local wheel folder may offer under the same version.
$(STAMP): pyproject.toml | system-deps
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	@echo "torch $(TORCH_VERSION): $(TORCH_VARIANT) build (TORCH_VARIANT=cpu|cuda overrides)"
ifeq ($(TORCH_VARIANT),cuda)
	$(PY) -m pip install -q "torch===$(TORCH_VERSION)" --index-url $(TORCH_CUDA_INDEX)
else ifeq ($(TORCH_VARIANT),cpu)
	$(PY) -m pip install -q "torch==$(TORCH_VERSION)+cpu" || \
	  $(PY) -m pip install -q "torch==$(TORCH_VERSION)+cpu" --index-url $(TORCH_CPU_INDEX)
else
	$(error TORCH_VARIANT must be cpu or cuda, got '$(TORCH_VARIANT)')
endif
	$(PY) -m pip install -q -e '.[test]'
	@rm -f $(VENV)/.installed-torch-*
	@touch $(STAMP)

demo: install
	$(VENV)/bin/unihope demo --out demo_out

test: install
	$(PY) -m pytest -q -p no:cacheprovider

test-fast: install
	$(PY) -m pytest -q -m "not slow" -p no:cacheprovider

bench: install
	for b in sources annotate deocclude_quality deocclude_speed loader training_step pipeline tag_lease rerun; do \
	  PYTHONPATH=. $(PY) bench/$$b.py || exit 1; done

clean:
	rm -rf demo_out .pytest_cache
