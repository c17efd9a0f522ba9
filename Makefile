# Two-command quick start: `make demo` and `make test` (each sets up .venv on first use).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.lm_diff-installed

# Offline hygiene: never reach the Hugging Face hub; caches stay inside the checkout.
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup demo demo-null test test-fast check bench wheel screenshot organisms-ship organisms-ship-natural clean

setup: $(STAMP)

# uv installs the ~90 packages in ~20 s where pip takes ~100 s (it is a PyPI package itself). It does not read pip's
# configuration, so pip's find-links (where this machine keeps the CPU torch wheel) are passed on explicitly.
FIND_LINKS ?= $(or $(PIP_FIND_LINKS),$(shell $(PYTHON) -m pip config get global.find-links 2>/dev/null))
UV := $(BIN)/uv pip install -q --python $(BIN)/python $(foreach f,$(FIND_LINKS),--find-links $(f))

$(STAMP): pyproject.toml constraints-cpu.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q uv
	# CPU pin: torch==2.13.0 resolves to a local CPU wheel; an unpinned torch pulls GBs of CUDA packages.
	$(UV) -c constraints-cpu.txt torch
	$(UV) -c constraints-cpu.txt -e ".[dev]"
	@touch $(STAMP)

demo: $(STAMP)
	HF_HOME=$(CURDIR)/.hf_cache $(BIN)/lm-diff demo

# Negative control: the same pipeline on base vs the null fine-tune (base trained further on the base mix).
demo-null: $(STAMP)
	HF_HOME=$(CURDIR)/.hf_cache $(BIN)/lm-diff run demo --set models.finetuned=organisms://demo/null --out runs/demo-null

# Retrain the demo organisms from scratch and store them as the copy shipped in lm_diff/data/organisms/demo (run it
# after changing the generator: tests/test_organisms.py fails while the shipped copy is stale).
organisms-ship: $(STAMP)
	$(BIN)/python -c "from lm_diff.organisms.build import ship; print(ship('demo'))"

# The same for the natural family (lm_diff/data/organisms/natural; the build checks its planted shape first).
organisms-ship-natural: $(STAMP)
	$(BIN)/python -c "from lm_diff.organisms.natural import ship; print(ship('demo'))"

test: $(STAMP)
	HF_HOME=$$(mktemp -d) $(BIN)/python -m pytest -q

# The linters alone: ruff (style, imports, blind excepts) and the import-layers contract of pyproject.toml.
check: $(STAMP)
	$(BIN)/ruff check lm_diff tests benchmarks
	$(BIN)/lint-imports

test-fast: $(STAMP)
	HF_HOME=$$(mktemp -d) $(BIN)/python -m pytest -q -m "not slow"

bench: $(STAMP)
	for b in benchmarks/bench_*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

wheel: $(STAMP)
	$(BIN)/python -m build --wheel --no-isolation -o dist .

# Rewrite the README's generated status tables (<!-- figures:NAME:begin/end --> blocks) from runs/demo and, when it
# exists, runs/demo-null: every figure in the README comes from a run and this command (lm_diff/dev/figures.py).
.PHONY: figures
figures: $(STAMP)
	@runs=$$(for r in runs/demo runs/demo-null; do test -f $$r/report.json && echo $$r; done); \
	test -n "$$runs" || { echo "no finished run in runs/demo: run 'make demo' (and 'make demo-null') first"; exit 1; }; \
	HF_HOME=$(CURDIR)/.hf_cache $(BIN)/lm-diff plan configs/gemma.yaml --json > benchmarks/results/plan_gemma.json.tmp && \
	  mv benchmarks/results/plan_gemma.json.tmp benchmarks/results/plan_gemma.json && \
	$(BIN)/python -m lm_diff.dev.figures $$runs --readme README.md

# Render the demo report in headless Chromium (Debian's chromium package) at 1280 px and save the PNG the README
# describes (benchmarks/results/report_demo.png): the first screen a reader sees.
SHOT ?= benchmarks/results/report_demo.png
screenshot:
	@test -f runs/demo/report.html || { echo "run 'make demo' first"; exit 1; }
	@command -v chromium >/dev/null || { apt-get update -q && apt-get install -y -q chromium; }
	chromium --headless --no-sandbox --disable-gpu --disable-background-networking --disable-component-update \
	  --disable-sync --no-first-run --hide-scrollbars --user-data-dir=$$(mktemp -d) --window-size=1280,2000 \
	  --screenshot=$(CURDIR)/$(SHOT) file://$(CURDIR)/runs/demo/report.html
	@echo "screenshot: $(SHOT)"

clean:
	rm -rf dist build .pytest_cache runs .hf_cache
