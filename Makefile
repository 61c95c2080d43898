# make test   set-up, then the whole test suite
# make bench  set-up, then the main job: on a GPU the benchmark sweep, written to reports/<device>/;
#             without one, every op checked on the interpreter and the committed reports re-rendered (no timing)
# The set-up (scripts/setup.sh) runs once; it runs again only when pyproject.toml or the script change.

PY = "$$(cat .python)"
PYTEST_ARGS ?=

.PHONY: setup test bench compile clean

setup: .setup-done

.setup-done: pyproject.toml scripts/setup.sh
	bash scripts/setup.sh
	@touch $@

test: .setup-done
	$(PY) -P -m pytest $(PYTEST_ARGS)

bench: .setup-done
	$(PY) -P -m softlight.bench.cli bench

compile: .setup-done
	env -u TRITON_INTERPRET $(PY) -P -m softlight.bench.cli compile --out reports/compile.md

clean:
	rm -rf .venv .setup-done .python
