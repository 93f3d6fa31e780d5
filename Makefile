# densehybrid_ros: two commands on a bare machine (`make demo`, `make test`); both build .venv first.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Keep DDS traffic of tests and demos on this host.
export ROS_AUTOMATIC_DISCOVERY_RANGE ?= LOCALHOST

.PHONY: venv test demo bench lock clean

venv: $(STAMP)

# Rebuilt only when the lock or the package metadata changes: idempotent.
$(STAMP): requirements.txt setup.py setup.cfg package.xml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip==23.2.1
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

test: venv
	$(PY) -m pytest -q test

demo: venv
	$(PY) -m densehybrid_ros.tools.demo --out demo_out

bench: venv
	$(PY) -m densehybrid_ros.tools.bench overhead --json --out bench_out/overhead.json
	$(PY) -m densehybrid_ros.tools.bench sim --json --out bench_out/sim.json
	$(PY) -m densehybrid_ros.tools.bench node --json --out bench_out/node.json
	$(PY) -m densehybrid_ros.tools.bench cameras --json --out bench_out/cameras.json
	$(PY) -m densehybrid_ros.evaluation.bench_streaming --pixels 1e8 --json --out bench_out/streaming_ap.json

# Regenerate the full lock from the direct pins, with the resolver's project names (ROS wheels also
# carry egg-info under other names, which `pip freeze` would list); torch's local '+cpu' tag dropped.
lock: venv
	$(PY) -m pip install --quiet --dry-run --ignore-installed --report .lock-report.json -r requirements.in
	$(PY) -c "import json; r = json.load(open('.lock-report.json')); \
	  rows = sorted('%s==%s' % (i['metadata']['name'].lower(), i['metadata']['version'].split('+')[0]) for i in r['install']); \
	  open('requirements.txt', 'w').write('# Full lock of the environment make venv builds (make lock, from requirements.in).\n' + '\n'.join(rows) + '\n')"
	rm -f .lock-report.json

# ROS machines (README, "On a ROS 2 machine"): requirements-ros.txt must resolve from wheels alone for Humble's
# Python 3.10 and Jazzy's/Kilted's 3.12. pip evaluates environment markers for the interpreter running it even with
# --python-version, so each version's lines are selected first (packaging's marker evaluation), then resolved.
.PHONY: check-ros-requirements
ROS_PYTHON_VERSIONS := 3.10 3.12
check-ros-requirements: venv
	@set -e; tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	for version in $(ROS_PYTHON_VERSIONS); do \
	  $(PY) -c 'import sys; from packaging.requirements import Requirement; \
	    env = {"python_version": sys.argv[2], "python_full_version": sys.argv[2] + ".0"}; \
	    reqs = [Requirement(r) for r in (l.split("#")[0].strip() for l in open(sys.argv[1])) if r]; \
	    print("\n".join(f"{r.name}{r.specifier}" for r in reqs if r.marker is None or r.marker.evaluate(env)))' \
	    requirements-ros.txt $$version > $$tmp/requirements-$$version.txt; \
	  echo "== Python $$version: $$(tr '\n' ' ' < $$tmp/requirements-$$version.txt)"; \
	  if ! $(PY) -m pip install --dry-run --only-binary=:all: --python-version $$version --ignore-installed \
	      --target $$tmp/target-$$version -r $$tmp/requirements-$$version.txt > $$tmp/pip-$$version.log 2>&1; then \
	    grep -v 'is ignored' $$tmp/pip-$$version.log | tail -5; exit 1; fi; \
	  grep '^Would install' $$tmp/pip-$$version.log; \
	done

clean:
	rm -rf $(VENV) demo_out bench_out *.egg-info
