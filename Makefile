# Two front-door commands: `make train` (the offline demo recipe) and `make test`.
# Both create .venv on first use and (re)install the package only when setup.py changed.
# Helpers: `make evaluate ARGS="--model_dir=runs/mnist5k ..."`, `make tensorboard` (localhost).
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
# onnx: tf2onnx, onnx, ONNX Runtime (three wheels, ~100 MB): tests/export/test_onnx.py's second engine.
EXTRAS ?= cpu,test,onnx
comma := ,
STAMP := $(VENV)/.installed-$(subst $(comma),-,$(EXTRAS))
MODEL_DIR ?= runs/mnist5k

.PHONY: train test test-fast evaluate tensorboard bench install clean

install: $(STAMP)

$(STAMP): setup.py
	@test -x $(PY) || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[$(EXTRAS)]"
	@touch $@

train: $(STAMP)
	$(PY) bin/train --flagfile=configs/mnist5k.flags --model_dir=$(MODEL_DIR)
	@echo "TensorBoard logs: $(MODEL_DIR)/tensorboard  (watch: make tensorboard, then http://localhost:6006)"
	@echo "SavedModel:       $(MODEL_DIR)/saved_model"

# oneDNN on, as TensorFlow runs by default on CPUs with AVX512_VNNI/BF16: every host, AVX2 ones
# included, tests the kernels and start-up messages those hosts give.
test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	TF_ENABLE_ONEDNN_OPTS=1 $(PY) -m pytest -q -n 2 --dist loadfile --durations=15 tests

# The unit tier, for every few minutes of work: no end-to-end runs (tests marked slow).
test-fast: $(STAMP)
	$(VENV)/bin/ruff check .
	TF_ENABLE_ONEDNN_OPTS=1 $(PY) -m pytest -q -n 2 --dist loadfile -m "not slow" --durations=10 tests

evaluate: $(STAMP)
	$(PY) bin/evaluate $(if $(ARGS),$(ARGS),--model_dir=$(MODEL_DIR))

tensorboard: $(STAMP)
	$(VENV)/bin/tensorboard --logdir $(MODEL_DIR)/tensorboard --host localhost

bench: $(STAMP)
	$(PY) -m pip install --quiet -e ".[cpu,bench,onnx]"
	$(PY) -m pip install --quiet --no-deps cleverhans==4.0.0
	for script in $(filter-out bench/timing.py,$(wildcard bench/*.py)); do $(PY) $$script || exit 1; done

clean:
	rm -rf $(VENV) runs .pytest_cache
