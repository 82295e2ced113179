# iofleet: `make up` runs the local fleet, `make test` runs every check.
# Both set up what they need and are safe to run again.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STATE  ?= .iofleet
APT_PACKAGES := redis-server haproxy nginx chromium
# Root needs no sudo; anyone else gets it for apt only.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: up down test setup system-packages lint typecheck test-py test-infra check-stack bench clean

up: setup
	$(VENV)/bin/iofleet up --max 6 --target-connections 100

down: setup
	$(VENV)/bin/iofleet down

test: setup lint typecheck test-py test-infra

setup: system-packages $(VENV)/.installed node_modules/.installed

# Install only what is missing, so a prepared machine pays nothing.
system-packages:
	@missing=""; \
	for pkg in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$pkg 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$pkg"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $(SUDO) apt-get -o DPkg::Lock::Timeout=120 update -q && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get -o DPkg::Lock::Timeout=120 install -y -q --no-install-recommends $$missing; \
	fi

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev,infra]'
	touch $@

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports

typecheck: setup
	$(VENV)/bin/mypy server iofleet infra autoscaler

# Pulumi mocks own their event loop, so infra tests run in their own pytest call.
test-py: setup
	$(VENV)/bin/pytest --ignore=tests/infra

test-infra: setup
	@if [ -d tests/infra ]; then $(VENV)/bin/pytest tests/infra -p no:asyncio -W ignore::pytest.PytestConfigWarning; else echo "no infra tests yet"; fi

# Offline, before `pulumi up`: the program's own validation, every problem at once.
check-stack: setup
	@test -n "$(STACK)" || { echo "usage: make check-stack STACK=<name of Pulumi.<name>.yaml>"; exit 2; }
	$(PY) -m infra.check Pulumi.$(STACK).yaml

bench: setup
	$(PY) -m bench.server_bench
	$(PY) -m bench.join_bench
	$(PY) -m bench.churn_bench
	$(PY) -m bench.fanout_bench --runs 3

clean:
	rm -rf $(VENV) node_modules $(STATE) .mypy_cache .ruff_cache .pytest_cache
