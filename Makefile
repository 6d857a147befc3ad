# The two commands of the README. Both work on a fresh machine: they make .venv and install into it.
PYTHON ?= python3
VENV ?= .venv
# PyTorch with torchvision (timm needs it; the build runs on CPU and GPU). The CPU-only build is
# smaller: `make TORCH=torch==2.13.0 EXTRAS=dev` (no timm: its interop test then fails to import).
TORCH ?= torch==2.14.1 torchvision==0.29.1
EXTRAS ?= dev,timm
CONFIG ?= configs/fmnist_vit_tiny.yaml
OVERRIDES ?=  # section.key=value settings for the demo's training, e.g. meta.cpu_bfloat16=false
BIN := $(VENV)/bin

.PHONY: demo test data install browser clean

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: $(BIN)/activate pyproject.toml
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e ".[$(EXTRAS)]"
	touch $@

install: $(VENV)/.installed

# Fashion-MNIST: Debian's package where apt works, else the dataset's own download, else a message.
data: install
	@if $(BIN)/python -c "from openjepa.data import find_fashion_mnist; find_fashion_mnist()" 2>/dev/null; then \
		echo "Fashion-MNIST found"; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] && \
		(apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) >/dev/null 2>&1; then \
		echo "Fashion-MNIST installed from Debian's dataset-fashion-mnist"; \
	elif $(BIN)/python -c "from openjepa.data import download_fashion_mnist; download_fashion_mnist()"; then \
		echo "Fashion-MNIST downloaded to data/fashion-mnist"; \
	else \
		echo "Fashion-MNIST could not be obtained: install Debian's dataset-fashion-mnist, or put the four"; \
		echo "idx files (train-images-idx3-ubyte.gz ...) in data/fashion-mnist"; exit 1; \
	fi

# Pretrain, then a quick probe (10k training labels) of the encoder beside a random one and raw pixels,
# then the report, whose first lines say whether it learned.
demo: data
	$(BIN)/openjepa train $(CONFIG) $(OVERRIDES)
	run=$$($(BIN)/python -c "from openjepa.config import load_config; print(load_config('$(CONFIG)').logging.folder)") && \
	$(BIN)/openjepa eval $$run/checkpoints/latest.pt --protocol linear,knn --baselines random,pixels \
		--train-limit 10000 --no-progress && \
	$(BIN)/openjepa report $$run

# Headless Chromium opens the run report in the tests: Debian's package where apt works.
browser:
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || \
	{ command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] && apt-get update -qq && \
	  apt-get install -y -qq chromium >/dev/null 2>&1; } || \
	{ echo "the report test needs headless Chromium: install Debian's chromium package"; exit 1; }

# The house rules first (lint, format, the import layers: README's Contributing), then the suite.
test: install browser
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/lint-imports
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) runs
