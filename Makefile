# The project's task runner. `make run` and `make test` work on a fresh machine: they
# create the virtualenv and install what is missing first.
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)

BUF := .tools/node_modules/.bin/buf
# Node tools, pinned: buf (lint, breaking) and swagger2openapi (OpenAPI 3 from Swagger 2).
TOOLS := .tools/.installed-buf-1.75.0-s2o-7.0.8

.PHONY: run test lint typecheck bench report protos system clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	rm -f $(VENV)/.installed-*
	touch $@

# A trial on this machine: development mode makes the JWT secret and the encryption key
# file under var/ (a server started otherwise refuses to run without real secrets).
run: $(STAMP)
	PROVISIONER_MODE=$${PROVISIONER_MODE:-development} $(BIN)/provisioning-server

$(TOOLS):
	npm install --silent --no-audit --no-fund --prefix .tools @bufbuild/buf@1.75.0 swagger2openapi@7.0.8
	touch $@

system:
	scripts/ensure-system-packages

lint: $(STAMP) $(TOOLS) system
	$(BIN)/ruff check --output-format concise server client tests bench scripts
	$(BIN)/ruff format --check server client tests bench scripts
	$(BIN)/lint-imports
	$(BUF) lint
	scripts/check-breaking $(BUF)
	scripts/gen-protos --check

protos: $(STAMP) $(TOOLS) system
	scripts/gen-protos

typecheck: $(STAMP)
	$(BIN)/mypy

test: $(STAMP) lint typecheck
	$(BIN)/pytest

bench: $(STAMP)
	$(BIN)/python bench/engine.py
	$(BIN)/python bench/api.py
	$(BIN)/python bench/provision.py
	$(BIN)/python bench/replicas.py

# The proving suites (crash, faults, load, hostile input, auth, rate limit, secrets, replicas,
# abuse by a valid caller),
# then their figures as one table.
SUITES := tests/e2e/test_crash_real.py tests/e2e/test_rollback_matrix.py tests/e2e/test_load.py \
	tests/integration/test_store_outage.py tests/e2e/test_lifecycle.py \
	tests/e2e/test_hostile_input.py tests/e2e/test_auth_attacks.py tests/e2e/test_auth_and_limits.py \
	tests/e2e/test_secrets.py tests/e2e/test_replicas.py tests/e2e/test_abuse.py

report: $(STAMP) system
	rm -f var/report.jsonl
	PROVISIONER_REPORT_FILE=$(CURDIR)/var/report.jsonl $(BIN)/pytest -q $(SUITES); \
	status=$$?; $(BIN)/python scripts/report.py var/report.jsonl; exit $$status

clean:
	rm -rf $(VENV) .tools var .mypy_cache .ruff_cache .pytest_cache .hypothesis
