# The two commands of the README: `make demo` and `make test`.
# Each creates its own virtual environment (.venv) from pinned versions on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export NIPYPE_NO_ET := 1
export TEMPLATEFLOW_AUTOUPDATE := 0

.PHONY: venv demo test clean

$(BIN)/.installed: pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements.lock
	$(BIN)/python -m pip install -q --no-deps -e .
	touch $@

venv: $(BIN)/.installed

demo: venv
	bash scripts/demo.sh

test: venv
	$(BIN)/python -m pytest -q -ra tests

clean:
	rm -rf $(VENV) demo
