# EComp: `make run` and `make test` work on a fresh machine (Python >= 3.10 with venv).
PYTHON ?= python3
# Bytecode under .cache/ (which make prepares), not in __pycache__ folders of the checkout.
export PYTHONPYCACHEPREFIX := $(CURDIR)/.cache/pycache
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
DEBIAN_DATA := /usr/share/datasets/fashion-mnist
EXTRAS ?= test,joblib,ray,postgres

.PHONY: setup data parent run test test-fast bench grid baselines search figures clean-store

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[$(EXTRAS)]'
	rm -rf ecomp.egg-info    # setuptools' build leftover: the installed metadata is in $(VENV)
	# bytecode now, into .cache/pycache: where PYTHONDONTWRITEBYTECODE is set, no import writes it
	$(BIN)/python -m compileall -q -j 0 $(VENV)/lib ecomp experiments run.py >/dev/null || true
	touch $(STAMP)

# FashionMNIST offline: Debian's dataset-fashion-mnist, installed when missing and we can.
data:
	@if [ -f data/FashionMNIST/raw/train-images-idx3-ubyte ] || [ -f $(DEBIAN_DATA)/train-images-idx3-ubyte.gz ]; then \
	  echo "FashionMNIST: present"; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	  (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) >/dev/null; \
	elif command -v apt-get >/dev/null && command -v sudo >/dev/null; then \
	  sudo apt-get update -qq && sudo apt-get install -y -qq dataset-fashion-mnist; \
	else \
	  echo "FashionMNIST: not installed; run.py will download it only with data.download=true"; \
	fi

# Unpack the data and train (or find cached) the parent network.
parent: setup data
	$(BIN)/python -m ecomp.app.prepare

run: parent
	$(BIN)/python run.py

test: parent
	$(BIN)/python -m pytest

test-fast: setup data
	$(BIN)/python -m pytest -m "not slow and not distributed"

bench: parent
	$(BIN)/python benchmarks/bench_run.py
	$(BIN)/python benchmarks/bench_kernels.py

# PARENT=cnn: the same on LeNet-5 (parent=cnn), 2 jobs at a time.
PARENT ?= mlp
JOBS = hydra/launcher=joblib hydra.launcher.n_jobs=2

grid: parent
	$(BIN)/python run.py -m parent=$(PARENT) 'fitness=glob(*)' 'seed=range(10)' $(JOBS)

# The baselines' frontier: 4 methods x 8 kept fractions x 10 seeds (MLP: about 5-10 min).
baselines: parent
	$(BIN)/python run.py -m parent=$(PARENT) method=l1_prune,l1_finetune,scratch,distill 'method.keep=0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9' 'seed=range(10)' $(JOBS)

# A 60-trial multi-objective Optuna search over the fitness weights and operators, 2 trials at a
# time; rerun to continue it (README: Find EComp's best settings).
search: parent
	$(BIN)/python run.py -m hydra/sweeper=optuna hydra/launcher=joblib hydra.launcher.n_jobs=2 hydra.sweeper.n_trials=60

figures: setup
	$(BIN)/python experiments/figures.py
