# The two commands of the README: `make demo` and `make test`.
# Each creates its own virtual environment (.venv) from pinned versions on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export NIPYPE_NO_ET := 1
export TEMPLATEFLOW_AUTOUPDATE := 0

.PHONY: venv mrtrix demo test clean

# MRtrix3 (the iFOD2 / SD_Stream / tckglobal baselines) comes from the distribution, not from pip.
# CI runs as root on a fresh Debian machine; elsewhere sudo is used when present.
SUDO := $(shell [ "$$(id -u)" = 0 ] || (command -v sudo >/dev/null && echo sudo))

$(BIN)/.installed: pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements.lock
	$(BIN)/python -m pip install -q --no-deps -e .
	touch $@

mrtrix:
	@command -v tckgen >/dev/null || ($(SUDO) apt-get update -qq && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends mrtrix3)

venv: $(BIN)/.installed mrtrix

demo: venv
	bash scripts/demo.sh

test: venv
	$(BIN)/python -m pytest -q -ra -n 2 --dist loadfile tests

clean:
	rm -rf $(VENV) demo

# Containers (README "Containers"): build the OCI image with podman, run the phantom demo inside
# and outside it, run it unprivileged with Charliecloud, and launch the Boutiques example with bosh.
.PHONY: container container-test container-charliecloud container-boutiques
container:
	bash scripts/container_build.sh

container-test: venv
	bash scripts/container_test.sh

container-charliecloud:
	bash scripts/container_charliecloud.sh

container-boutiques: venv
	bash scripts/container_boutiques.sh

# The Boutiques descriptor is generated from the command-line parser (tests/test_container.py
# fails when it lags): run this after changing an option of gentract_bids/cli/parser.py.
.PHONY: boutiques
boutiques: $(BIN)/.installed
	$(BIN)/python scripts/boutiques_descriptor.py
