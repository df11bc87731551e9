# Two commands a user needs: `make demo` (the main job on embedded defaults) and `make test`.
# Each creates .venv (Python 3.11) and installs requirements.txt when it changed.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export NM_DISABLE_ANALYTICS := 1

.PHONY: demo test venv clean

$(STAMP): requirements.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	@touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(PY) demo.py

# DeepSparse/OpenVINO leave native threads behind that can crash a later fork in the same process:
# their tests run in a second pytest process.
test: $(STAMP)
	$(PY) -m pytest -q -m "not native_engines" $(PYTEST_ARGS)
	$(PY) -m pytest -q -m native_engines $(PYTEST_ARGS)

clean:
	rm -rf runs .pytest_cache
