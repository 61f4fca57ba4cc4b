# Two commands on a fresh machine: `make study` (the default digits study) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STUDY ?= params/digits.yaml

.PHONY: setup study test lab clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

setup: $(VENV)/.installed

study: setup  ## set up and run the default digits study (offline, CPU)
	$(VENV)/bin/mvc study $(STUDY)

test: setup  ## set up and run the test suite
	$(PY) -m pytest -q

lab: setup  ## open the notebooks in JupyterLab
	$(VENV)/bin/jupyter lab notebooks/

clean:
	rm -rf runs/
