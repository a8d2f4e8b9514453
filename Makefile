# Two commands on a fresh machine: `make demo` and `make test`. Both install into .venv first.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed

.PHONY: install demo test lint docs bench clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -c constraints.txt -e ".[all,test]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/breccia demo

lint: $(STAMP)
	$(VENV)/bin/ruff check breccia tests benchmarks

test: $(STAMP) lint
	$(PY) -m pytest -n 2 -q
	$(PY) -m pytest --nbmake -q notebooks
	$(VENV)/bin/mkdocs build --strict --quiet

bench: $(STAMP)
	$(PY) benchmarks/bench_quantize.py

clean:
	rm -rf $(VENV) site .pytest_cache .hypothesis
