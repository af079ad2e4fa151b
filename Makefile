# Two commands do everything on a fresh machine with Python 3.11:
#   make demo   — create .venv if needed, install, run the main job on the bundled default dataset
#   make test   — same set-up, then the whole test suite
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# test processes (pytest-xdist, whole files per process): TensorFlow leaves a core idle while it
# traces and compiles, so two processes on two cores finish the suite ~1.5x sooner than one
TEST_WORKERS ?= 2

.PHONY: demo demo-focused demo-heterogeneity gui test test-fast test-install lint install bench clean

# The two distributions of the checkout, both editable: the plugin (scipion-em-gmmrefine, from .)
# and the engine (gmmcore, from ./gmmcore); their dependencies are the pins of requirements.txt.
# The plugin first: reinstalling it over an older single-distribution install must not remove the
# engine's `gmmcore` script afterwards.
$(STAMP): requirements.txt setup.py pyproject.toml gmmcore/pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -e .
	$(PY) -m pip install -q --no-deps -e ./gmmcore
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m gmmrefine_scipion.demo --out demo_out

# global -> patch-by-patch refinement on a simulated particle with a moving domain (engine only)
demo-focused: $(STAMP)
	$(PY) demos/focused.py --out demo_focused_out

demo-heterogeneity: $(STAMP)
	$(PY) demos/heterogeneity.py --out demo_heterogeneity

gui: $(STAMP)
	$(PY) -m gmmrefine_scipion.gui --out demo_out

test: $(STAMP)
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -p no:cacheprovider -n $(TEST_WORKERS) --dist loadfile --durations=20

# inner loop (a few minutes): lint + every test but the long chains (Scipion project chains,
# heterogeneity, the focused-domain and realistic science runs); `make test` runs them all
test-fast: $(STAMP)
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -p no:cacheprovider -n $(TEST_WORKERS) --dist loadfile -m "not slow and not install" \
		--ignore=gmmrefine_scipion/tests --ignore=tests/test_heterogeneity.py \
		--ignore=tests/test_focused_domain.py --ignore=tests/test_realistic.py

# slow tier: Scipion's own installer on a copy of this checkout in a fresh venv (PyPI needed, ~10 min)
test-install: $(STAMP)
	GMMREFINE_SLOW_TESTS=1 $(PY) -m pytest -p no:cacheprovider -m install tests/plugin/test_scipion_install.py

lint: $(STAMP)
	$(VENV)/bin/lint-imports

bench: $(STAMP)
	$(PY) benchmarks/bench_align.py --backends tf jax --cases i --batches 16 64 256 auto --interleave-batches --out benchmarks/results/bench_align_cpu.json

clean:
	rm -rf demo_out demo_focused_out demo_heterogeneity .pytest_cache
