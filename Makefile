# The two commands of this project: `make demo` and `make test`.
# Both do their own set-up (apt packages, a venv, pip install) and are idempotent.
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.ipsctl-installed

.PHONY: setup demo test test-pure lint bench bench-lab clean

setup: $(STAMP)

# The compiled packet path (ips/fast/_fastpath.pyx, _streamparse.pyx, _dnsparse.pyx) and NFQUEUE loop (ips/io/_nfqdrain.pyx) are built by the editable install: a change
# to it (or to its build, setup.py) makes `make` install again, which rebuilds it.
$(STAMP): pyproject.toml setup.py scripts/setup.sh ips/fast/_fastpath.pyx ips/io/_nfqdrain.pyx \
		ips/fast/_streamparse.pyx ips/fast/_dnsparse.pyx
	bash scripts/setup.sh $(VENV)
	touch $(STAMP)

demo: setup
	$(BIN)/python labs/demo.py

# The lint runs first: a test run on code that does not pass it is not a green run. Then the
# compiled path's tests again with IPSCTL_PURE=1: the pure-Python engine alone must pass too.
test: lint
	$(BIN)/python -m pytest -n auto -q
	IPSCTL_PURE=1 $(BIN)/python -m pytest -n auto -q tests/pure/test_fastpath_differential.py tests/pure/test_fastpath_loader.py \
		tests/pure/test_nfqdrain_differential.py

# The pure tests only (tests/pure/): no root, no namespaces, anywhere, in seconds.
test-pure: setup
	$(BIN)/python -m pytest -n auto -q -m "not lab"

# ruff (lint and format) over every Python folder; mypy reads its settings (ips/) from pyproject.toml.
lint: setup
	$(BIN)/ruff check ips tests bench labs
	$(BIN)/ruff format --check ips tests bench labs
	$(BIN)/mypy

bench: setup
	$(BIN)/python bench/engine.py

# Root: namespaces, NFQUEUE. Bounded (about 10 minutes with the defaults).
bench-lab: setup
	$(BIN)/python bench/lab.py

clean:
	rm -rf $(VENV) build *.egg-info ips/fast/_fastpath.c ips/fast/_fastpath*.so \
		ips/io/_nfqdrain.c ips/io/_nfqdrain*.so ips/fast/_streamparse.c ips/fast/_streamparse*.so \
		ips/fast/_dnsparse.c ips/fast/_dnsparse*.so
