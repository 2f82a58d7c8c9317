# Two commands on a fresh machine:
#   make report     installs what is needed (a local .venv), runs the pipeline, prints where the report is
#   make test       installs the same, lints, then runs the whole test suite (what .ci/run calls)
# For daily work: make test-fast (unit tests, no workflow runs, under 2 minutes), make lint.
# Variables: CORES (default 2), CONFIG (extra --configfile overlay, e.g. presets/hw4.yaml), PYTHON.

PYTHON ?= python3
VENV   ?= .venv
CORES  ?= 2
CONFIG ?=
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed-$(shell cat requirements.txt pyproject.toml | cksum | cut -d' ' -f1)
SNAKEMAKE_ARGS = --cores $(CORES) $(if $(CONFIG),--configfile $(CONFIG))

.PHONY: report test test-fast install system-deps lint clean

# A run killed hard (kill -9, OOM, a closed terminal) leaves .snakemake/locks behind: the helper
# unlocks it when no snakemake is running here, and stops (naming the process) when one is.
report: install
	HF_HUB_OFFLINE=$${HF_HUB_OFFLINE-1} $(BIN)/python -m diffusion_report.lock --snakemake $(BIN)/snakemake -- $(SNAKEMAKE_ARGS)
	HF_HUB_OFFLINE=$${HF_HUB_OFFLINE-1} $(BIN)/snakemake $(SNAKEMAKE_ARGS)
	@echo
	@echo "Report: $(CURDIR)/results/report/report.html"
	@test ! -f results/report/report.pdf || echo "PDF:    $(CURDIR)/results/report/report.pdf"

test: lint system-deps
	$(BIN)/pytest

test-fast: install
	$(BIN)/pytest -m "not slow and not browser and not slurm" -q

install: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --disable-pip-version-check -q -r requirements.txt
	$(BIN)/python -m pip install --disable-pip-version-check -q --no-deps -e .
	rm -f $(VENV)/.installed-*
	touch $@

# Debian packages the browser and PDF checks use (skipped with a reason where they cannot be installed).
system-deps:
	@if command -v chromium >/dev/null && command -v pdftoppm >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing chromium and poppler-utils (browser and PDF page checks)"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium poppler-utils) >/dev/null \
	  || echo "could not install chromium/poppler-utils: those tests will skip"; \
	else echo "chromium/poppler-utils missing and not root: browser and PDF page tests will skip"; fi

# Snakemake's own linter, snakefmt on the Snakefile and rules, ruff on the Python (pyproject.toml).
lint: install
	$(BIN)/snakemake --lint
	$(BIN)/snakefmt --check --diff Snakefile rules
	$(BIN)/ruff check .

clean:
	rm -rf results logs benchmarks .snakemake
