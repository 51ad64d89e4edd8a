# Quickstart targets: each installs what it needs, then runs.
PY ?= python3
CONFIG ?= configs/demo.yaml

.PHONY: install demo test study clean

install:
	$(PY) -m pip install --quiet --disable-pip-version-check torch==2.13.0
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt

# Synthetic archive -> DINO with dynamic pruning -> evaluation table (CPU, a few minutes).
demo: install
	$(PY) prepare.py $(CONFIG)
	$(PY) pretrain.py $(CONFIG)
	$(PY) evaluate.py $(CONFIG)
	@echo "data: data/demo/*/montage.png   run: runs/demo/   report: runs/demo/eval/report.md"

test: install
	$(PY) -m pytest -q tests

study: install
	$(PY) study.py configs/study.yaml

clean:
	rm -rf data/demo runs/demo
