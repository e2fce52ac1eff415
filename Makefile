# Two front-door commands: `make train` (the offline demo recipe) and `make test`.
# Both create .venv on first use and (re)install the package only when setup.py changed.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
EXTRAS ?= cpu,test
STAMP := $(VENV)/.installed-$(subst $(comma),-,$(EXTRAS))
comma := ,
MODEL_DIR ?= runs/mnist5k

.PHONY: train test bench install clean

install: $(STAMP)

$(STAMP): setup.py
	@test -x $(PY) || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[$(EXTRAS)]"
	@touch $@

train: $(STAMP)
	$(PY) bin/train --flagfile=configs/mnist5k.flags --model_dir=$(MODEL_DIR)
	@echo "TensorBoard logs: $(MODEL_DIR)/tensorboard  (watch: $(VENV)/bin/tensorboard --logdir $(MODEL_DIR)/tensorboard)"
	@echo "SavedModel:       $(MODEL_DIR)/saved_model"

test: $(STAMP)
	$(PY) -m pytest -q tests

bench: $(STAMP)
	$(PY) -m pip install --quiet -e ".[cpu,bench]"
	$(PY) -m pip install --quiet --no-deps cleverhans==4.0.0
	for script in $(filter-out bench/timing.py,$(wildcard bench/*.py)); do $(PY) $$script || exit 1; done

clean:
	rm -rf $(VENV) runs .pytest_cache
