# Two commands do all the set-up on a fresh machine:
#   make quick   -> create .venv, install, run the embedded default suite (CPU, minutes)
#   make test    -> create .venv, install, run the test suite (what CI runs)
VENV ?= .venv
PY := $(VENV)/bin/python
# CPU build by default (a plain `torch` pulls a multi-GB CUDA build); on a GPU machine:
#   make quick TORCH_SPEC='torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128'
TORCH_SPEC ?= torch==2.13.0

.PHONY: quick test install clean-venv

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

install: $(VENV)/.installed

quick: $(VENV)/.installed
	$(VENV)/bin/optbench run suites/quick.yaml

test: $(VENV)/.installed
	$(VENV)/bin/pytest -q

clean-venv:
	rm -rf $(VENV)
