# The two commands of the README: `make demo` and `make test`. Both install what they need first.
PY := .venv/bin/python

.PHONY: setup demo test test-fast bench gpu-pack clean
setup:
	@bash scripts/setup.sh

demo: setup
	$(PY) -m neurosurgeon demo

test: setup
	$(PY) -m pytest -q

test-fast: setup
	$(PY) -m pytest -q -m "not slow"

bench: setup
	$(PY) -m neurosurgeon bench compile

gpu-pack: setup
	$(PY) -m neurosurgeon gpu-pack --force

clean:
	rm -rf .venv .pytest_cache out
