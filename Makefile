# spotmap: the two commands of the README's quick start.
#   make demo   creates .venv, installs spotmap and runs `spotmap demo` into results/
#   make test   installs the test extra and runs the test suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: demo test install clean

$(BIN)/spotmap: pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys, venv, ensurepip; assert sys.version_info >= (3, 10)' 2>/dev/null || { \
	  echo "spotmap needs Python >= 3.10 with venv (Debian: apt-get install python3 python3-venv)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[test]'
	@touch $@

install: $(BIN)/spotmap

demo: install
	$(BIN)/spotmap demo --outdir results

test: install
	$(BIN)/python -m pytest tests

clean:
	rm -rf $(VENV) results
