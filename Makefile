# Two commands do all the set-up on a fresh machine with Python 3.11 and make:
#   make run    trains, evaluates, exports and draws predictions (python main.py)
#   make test   runs the test suite
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed-stamp

.PHONY: run test install clean ablation bench

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip
	$(VENV)/bin/python -m pip install -q -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(VENV)/bin/python main.py $(ARGS)

# Two pytest-xdist workers, a module to a worker (its module-scoped models are trained once):
# much of a test's time is one-threaded Python (tracing, data set-up), so two processes keep
# both cores busy: 8.1 min for 957 tests in a clean clone (AMD EPYC family 26, 2026-12-05);
# 11.0 min against 18.8 min in one process on a Xeon with AMX (2026-12-02).
test: $(STAMP)
	$(VENV)/bin/python -m pytest -q -ra -n 2 --dist loadscope --doctest-modules keras_retina experiments tests

# The paper study (experiments/paper_study.py): Table 1a-e, the prior and Figure 4 with 3 seeds
# (writes docs/paper_study.md, docs/paper_study_*.png and the records in docs/paper_study_runs/).
# WARNING: this TRAINS FOR HOURS: about a hundred runs of 10-40 minutes each on a 2-core CPU.
# It resumes: finished or kept runs are skipped. ARGS="--table=1b" runs one table;
# `python -m experiments.paper_study --collect` rebuilds the docs only, from the records, with no training.
ablation: $(STAMP)
	$(VENV)/bin/python -m pip install -q -e ".[test,experiments]"
	$(VENV)/bin/python -m experiments.paper_study --table=all --seeds=0,1,2 $(ARGS)

# keras_retina against keras-hub, the first run and LiteRT (benchmarks/run.py): about 35 minutes on
# 2 cores. WARNING: it REWRITES COMMITTED DOCS (docs/BENCHMARKS.md's generated tables and
# docs/benchmarks*.json) with this machine's figures; `make bench WRITE_DOCS=no` only prints them.
# ARGS="--only=litert" runs one group.
WRITE_DOCS ?= yes
bench: $(STAMP)
	@echo "make bench: about 35 min on 2 cores; WRITE_DOCS=$(WRITE_DOCS) (yes rewrites docs/BENCHMARKS.md and docs/benchmarks*.json)"
	$(VENV)/bin/python -m pip install -q -e ".[test,bench]"
	$(VENV)/bin/python -m benchmarks.run $(if $(filter yes,$(WRITE_DOCS)),--write_docs) $(ARGS)

clean:
	rm -rf $(VENV) build *.egg-info
