# The two commands of the README. Both work on a fresh machine: they make .venv and install into it.
PYTHON ?= python3
VENV ?= .venv
# The CPU build of PyTorch; `make TORCH=torch` takes whatever pip resolves (a CUDA build on Linux).
TORCH ?= torch==2.13.0
CONFIG ?= configs/fmnist_vit_tiny.yaml
BIN := $(VENV)/bin

.PHONY: demo test data install clean

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: $(BIN)/activate pyproject.toml
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet -e ".[dev]"
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

demo: data
	$(BIN)/openjepa train $(CONFIG)

test: install
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) runs
