# Each target installs what it needs into .venv, so a fresh clone needs only `make demo` / `make test`.
# The demo needs memtrain alone; the test extra (CuPy, NVRTC, Ray, ruff, ...) only `make test` and `make bench`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test

.PHONY: demo test bench mutation clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install -q -e .
	# where the NVIDIA driver lists a GPU the demo trains on it: CuPy too
	if nvidia-smi -L >/dev/null 2>&1; then $(BIN)/python -m pip install -q -e '.[cuda12]'; fi
	touch $(STAMP)

$(TEST_STAMP): $(STAMP)
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(TEST_STAMP)

demo: $(STAMP)
	rm -rf runs/digits-demo  # a fresh demo each time
	$(BIN)/memtrain train docs/example-job.toml
	@echo
	@echo "memtrain is installed in $(VENV): run it as $(BIN)/memtrain (e.g. $(BIN)/memtrain runs),"
	@echo "or put it on PATH for this shell with: source $(BIN)/activate"

test: $(TEST_STAMP)
	$(BIN)/ruff check memtrain tests bench  # the rules kept: [tool.ruff] in pyproject.toml
	# one test process per core (pytest-xdist, at most 4), each test module whole in one of them: its
	# module fixtures (a Ray instance, a Prometheus, a service) start once
	# with bytecode written (Python's default, which some CI images turn off): otherwise each of the
	# tests' memtrain subprocesses compiles its modules from source again (a service's 88: ~0.1 s)
	env -u PYTHONDONTWRITEBYTECODE $(BIN)/python -m pytest -q -n auto --maxprocesses 4 --dist loadscope

bench: $(TEST_STAMP)
	$(BIN)/python -m pip install -q 'torch==2.13.0' || echo "torch not installable: running without the peer"
	$(BIN)/python bench/throughput.py  # PyTorch runs as the peer whenever it is importable (--peer auto)

# mutation testing of the safety-critical modules (docs/testing.md), one module at a time under nice:
# `make mutation MODULE=admission`; without MODULE, every module of mutation/modules.toml in turn
MUTATION_MODULES := admission scheduler security confinement checkpoint plan cpu-dispatch
mutation: $(STAMP)
	$(BIN)/python -m pip install -q -e '.[mutation]'
	@status=0; for m in $(or $(MODULE),$(MUTATION_MODULES)); do $(BIN)/python mutation/run.py $$m || status=1; done; \
	exit $$status

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
