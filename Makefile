# iofleet: `make up` runs the local fleet, `make test` runs every check.
# Both set up what they need and are safe to run again.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STATE  ?= .iofleet
# podman and friends build and run the images in tests/images (make images); mmdebstrap
# makes their base from the Debian archive when no registry is reachable.
APT_PACKAGES := redis-server haproxy nginx chromium \
  podman buildah runc uidmap slirp4netns fuse-overlayfs mmdebstrap
# Podman's settings for this kind of VM, without editing /etc (infra/docker/containers.conf).
export CONTAINERS_CONF ?= $(CURDIR)/infra/docker/containers.conf
# Root needs no sudo; anyone else gets it for apt only.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

# Every environment installs from uv.lock, frozen (README, "Installs"). uv itself is
# bootstrapped into .uv/ from requirements/uv.txt, pinned by hash.
UV        := .uv/bin/uv
UV_SYNC   := UV_PROJECT_ENVIRONMENT=$(VENV) $(UV) sync --frozen --python $(PYTHON) --extra dev --extra infra
LATEST    ?= .venv-latest
# Files exported from uv.lock for the installs that are not uv's: the images (pip,
# --require-hashes: runtime.txt into the image, build.txt for the wheel build) and the
# policy pack (Pulumi's own pip step).
EXPORTS   := requirements/runtime.txt requirements/build.txt infra/policy/requirements.txt
EXPORT    := $(UV) export --frozen --quiet --format requirements-txt --no-header

.PHONY: up down test setup system-packages lint typecheck test-py test-infra check-stack bench clean lock exports check-lock test-latest images push-images

# IMAGES=1: the fleet's servers run from the server image (built first, from the lock).
up: setup $(if $(IMAGES),images)
	$(if $(IMAGES),IOFLEET_SERVER_IMAGE=localhost/iofleet-server:local) \
	  $(VENV)/bin/iofleet up --max 6 --target-connections 100

# Both images from the lock with podman; the base comes from Debian (cached by its inputs).
images: system-packages
	infra/docker/build-images

# Both images built as above and pushed to ECR tagged with the git sha (a clean tree):
#   make push-images REGISTRY="<account>.dkr.ecr.us-east-1.amazonaws.com ..."
push-images: system-packages
	$(VENV)/bin/iofleet images push $(foreach r,$(REGISTRY),--registry $(r))

down: setup
	$(VENV)/bin/iofleet down

test: setup check-lock lint typecheck test-py test-infra

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

$(UV): requirements/uv.txt
	test -x .uv/bin/python || $(PYTHON) -m venv .uv
	.uv/bin/python -m pip install -q --disable-pip-version-check --require-hashes -r requirements/uv.txt
	touch $@

# --frozen: install exactly what uv.lock says, never re-resolve (a stale lock fails
# check-lock instead of being silently rewritten).
$(VENV)/.installed: pyproject.toml uv.lock $(UV)
	$(UV_SYNC)
	touch $@

# Re-resolve within pyproject's bounds and re-export; commit the results together.
lock: $(UV)
	$(UV) lock --upgrade
	$(MAKE) --no-print-directory exports

exports: $(UV)
	$(EXPORT) --no-dev --no-emit-project --no-default-groups -o requirements/runtime.txt
	$(EXPORT) --only-group policy --no-emit-project -o infra/policy/requirements.txt
	$(EXPORT) --only-group build --no-emit-project -o requirements/build.txt

# The lock matches pyproject, and the exported files match the lock.
check-lock: $(UV)
	$(UV) lock --check
	@for f in $(EXPORTS); do cp $$f $$f.committed; done; \
	$(MAKE) --no-print-directory exports >/dev/null; status=0; \
	for f in $(EXPORTS); do \
	  cmp -s $$f $$f.committed || { echo "$$f is not what uv.lock exports: run make exports"; status=1; }; \
	  mv $$f.committed $$f; \
	done; exit $$status

# The whole suite on the newest versions pyproject allows, in its own venv: an upstream
# release shows up here as one command's result, not as a broken fresh clone.
test-latest: system-packages node_modules/.installed $(UV)
	rm -rf $(LATEST)
	$(UV) venv --quiet --python $(PYTHON) $(LATEST)
	VIRTUAL_ENV=$(LATEST) $(UV) pip install --quiet --upgrade -e '.[dev,infra]'
	@echo "versions that differ from uv.lock:"
	@VIRTUAL_ENV=$(LATEST) $(UV) pip freeze --exclude-editable | sort > $(LATEST)/freeze.txt
	@$(EXPORT) --no-hashes --no-emit-project --extra dev --extra infra --no-default-groups \
	  | grep -E '^[A-Za-z0-9_.-]+==' | sed 's/ *;.*//' | sort > $(LATEST)/locked.txt
	@comm -13 $(LATEST)/locked.txt $(LATEST)/freeze.txt | sed 's/^/  /' || true
	touch $(LATEST)/.installed
	$(MAKE) --no-print-directory VENV=$(LATEST) lint typecheck test-py test-infra

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports

typecheck: setup
	$(VENV)/bin/mypy server iofleet infra autoscaler relay

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
	rm -rf $(VENV) $(LATEST) .uv node_modules $(STATE) .mypy_cache .ruff_cache .pytest_cache
