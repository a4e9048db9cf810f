# ckpt-eval: `make deploy` deploys and evaluates on this machine; `make test` runs every test with coverage;
# `make bench` measures ckpt-eval against the hardware floor (bench/).
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin

.PHONY: venv os-prerequisites deploy demo test unit integration reliability bench lint clean

# The example architecture plugin (examples/sonar-plugin) is installed after ckpt-eval, as an operator
# would install one (a regular, non-editable install): the tests use it through its entry point.
SONAR_PLUGIN := examples/sonar-plugin
$(BIN)/.installed: pyproject.toml constraints.txt $(SONAR_PLUGIN)/pyproject.toml $(wildcard $(SONAR_PLUGIN)/src/*/*.py)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	$(BIN)/pip install --quiet -c constraints.txt ./$(SONAR_PLUGIN)
	touch $@

venv: $(BIN)/.installed

# The Debian packages the tests need (git, PostgreSQL, node/npm, ...): listed in the script, installed
# when missing as root on Debian; otherwise it names them and fails. Instant when all are present.
os-prerequisites:
	bash scripts/os-prerequisites

deploy: venv
	$(BIN)/ansible-playbook -i inventories/local playbooks/deploy.yml --vault-password-file inventories/local/vault-password

demo: venv
	$(BIN)/python scripts/local_demo.py

test: os-prerequisites venv
	$(BIN)/coverage erase
	$(BIN)/coverage run -m pytest tests
	$(BIN)/coverage combine --quiet
	$(BIN)/coverage report

# `make bench` (quick, about 2 minutes on 2 cores) or `make bench BENCH_MODE=full`; see bench/__init__.py.
# Extra flags: BENCH_ARGS="--checkpoints 20 --out before.json"; compare: .venv/bin/python -m bench compare A B
BENCH_MODE ?= quick
BENCH_ARGS ?=
bench: venv
	$(BIN)/python -m bench --mode $(BENCH_MODE) $(BENCH_ARGS)

reliability: venv
	$(BIN)/pytest tests/reliability

unit: venv
	$(BIN)/pytest tests/unit

integration: venv
	$(BIN)/pytest tests/integration

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/yamllint --strict -c .yamllint .
	ANSIBLE_VAULT_PASSWORD_FILE=inventories/local/vault-password $(BIN)/ansible-lint --profile production

clean:
	rm -rf $(VENV) .coverage .coverage.* .pytest_cache
