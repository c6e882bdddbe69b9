# The two commands of the README: `make run` (main job) and `make test` (all tests).
# Both create .venv on first use (scripts/setup.sh is idempotent).
SHELL := /bin/bash
VENV := .venv
BIN := $(VENV)/bin
ENV := source scripts/env.sh && PATH=$(CURDIR)/$(BIN):$$PATH

.PHONY: setup run test lint bench clean

setup:
	@bash scripts/setup.sh

run: setup
	@$(ENV) ki-vla demo

test: setup lint
	@$(ENV) ROS_DOMAIN_ID=$${ROS_DOMAIN_ID:-$$((20 + RANDOM % 60))} python -m pytest

lint: setup
	@$(BIN)/ruff check .

clean:
	rm -rf build install log .ros .pytest_cache
