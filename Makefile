# `make test` builds .venv (once; again when pyproject.toml or requirements change) and runs the suite.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: test test-all install bench clean tiny-model browser

test: $(VENV)/.installed browser
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-all: $(VENV)/.installed browser
	$(BIN)/python -m pytest -m "" $(PYTEST_ARGS)

# The page tests drive Debian's Chromium through Playwright (no browser download). Without it `make test` fails:
# install it yourself (apt-get install chromium) where this cannot (it needs root).
browser:
	@command -v chromium >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) \
		|| { echo "could not install chromium (apt-get needs root): install it, then run make test again" >&2; exit 1; }

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml requirements/test.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements/test.txt -e '.[export,dev,vespa,ray]'
	touch $@

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache

# The bundled tiny CLIP: render synth scenes, train, export into the package (about 10 minutes on 2 cores).
tiny-model: $(VENV)/.installed
	$(BIN)/clipseek train-tiny src/clipseek/models/tiny
