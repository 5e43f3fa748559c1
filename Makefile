# Two commands for a fresh machine (Debian/Ubuntu, Python 3.11-3.13, x86_64, no ROS):
#   make run    set up .venv and run the whole graph on simulated sensors (Ctrl-C stops)
#   make test   set up .venv and the test peers, then run the whole test suite
PYTHON ?= python3
VENV ?= .venv
ARGS ?= --scenario patrol
export ROS_AUTOMATIC_DISCOVERY_RANGE ?= LOCALHOST

.PHONY: run test venv install test-deps launch-kit bench soak clean

$(VENV)/.deps: requirements.txt requirements-test.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -r requirements-test.txt
	touch $@

venv: $(VENV)/.deps

# A real (non-editable) install, so launch/ and config/ land in $(VENV)/share like colcon's.
install: venv
	$(VENV)/bin/pip install -q --no-deps --no-build-isolation --force-reinstall .

run: install
	$(VENV)/bin/bodycam run $(ARGS)

test-deps:
	bash scripts/install-test-deps.sh

# ROS 2 Jazzy's launch, launch_ros and ros2cli (no wheels: vendored sources in ../shared) for
# the real `ros2 launch` tests; needs cmake and a compiler from test-deps; a no-op once done.
KIT := ../shared/tools/ros2-launch-kit.sh
launch-kit: venv test-deps
	if [ -f $(KIT) ]; then bash $(KIT) $(VENV); fi

test: install test-deps launch-kit
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

bench: install
	$(VENV)/bin/python -m bench.camera_encode
	$(VENV)/bin/python -m bench.trigger_latency
	$(VENV)/bin/python -m bench.lookback
	$(VENV)/bin/python -m bench.upload
	$(VENV)/bin/python -m bench.live_latency
	$(VENV)/bin/python -m bench.live_relay
	$(VENV)/bin/python -m bench.encryption
	$(VENV)/bin/python -m bench.budget
	$(VENV)/bin/python -m bench.portal
	$(VENV)/bin/python -m bench.portal_visible
	$(VENV)/bin/python -m bench.replay

# Not part of `make bench`: ~10 min of compressed shift (SOAK_ARGS="--minutes 60 --seed 2").
soak: install
	$(VENV)/bin/python -m bench.soak $(SOAK_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
