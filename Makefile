# Quickstart targets: each installs what it needs, then runs.
PY ?= python3
CONFIG ?= configs/demo.yaml

.PHONY: install demo test study

install:
	$(PY) -m pip install --quiet --disable-pip-version-check torch==2.13.0
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt

demo: install
	$(PY) prepare.py $(CONFIG)

test: install
	$(PY) -m pytest -q tests
