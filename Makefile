# probml set-up. `make demo` and `make test` create .venv on first use.
PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_WORKERS ?= 2

.PHONY: demo demo-full test lint bench gpu-check clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install "$(TORCH)"
	$(BIN)/python -m pip install -e ".[dev,data,hf]"
	touch $(STAMP)

$(VENV): $(STAMP)

demo: $(STAMP)
	$(BIN)/probml demo

demo-full: $(STAMP)
	$(BIN)/probml demo --full

test: $(STAMP)
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: $(STAMP)
	@set -e; for f in benchmarks/*.py; do \
	  case $$f in */_*|*/basis_pool.py) continue;; esac; \
	  echo "== $$f (quick)"; rc=0; $(BIN)/python $$f --quick || rc=$$?; \
	  if [ $$rc -eq 3 ]; then continue; fi; [ $$rc -eq 0 ] || exit $$rc; done  # 3: skipped

gpu-check:  # on a CUDA machine (the device image's python3; see benchmarks/gpu_check.sh)
	bash benchmarks/gpu_check.sh

clean:
	rm -rf $(VENV) runs .pytest_cache
