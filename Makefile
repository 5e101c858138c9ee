# One way to build, test, lint and generate: the README and CI call these targets.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
CARGO ?= cargo
# The end-to-end tests crash the operator at chosen points: a test-only build (see src/fault.rs).
TEST_FEATURES := --features oauth-operator/fault-injection

# Where `make testenv` puts kube-apiserver, etcd, hydra, helm, Keycloak... (see testenv/build.sh).
TESTENV_DIR := $(shell bash testenv/build.sh --print-dir)
export TESTENV_DIR

.PHONY: all build test bench testenv lint fmt fmt-check clippy crds crds-check fault-check run image clean-testenv

all: build

build:
	$(CARGO) build --workspace

## testenv: build/fetch every real test component into the cache (a second run does nothing)
testenv:
	bash testenv/build.sh

## test: every test (unit, provider, controller, end-to-end) on the real test environment
## (test logs go to target/tmp/oauth-operator-*, cleared here; a failing test prints its directory)
test: testenv crds-check fault-check
	rm -rf "$${CARGO_TARGET_DIR:-target}"/tmp/oauth-operator-*
	rc=0; $(CARGO) test --workspace --all-targets --no-fail-fast $(TEST_FEATURES) || rc=$$?; \
	  scripts/leak-scan.sh "$${CARGO_TARGET_DIR:-target}/tmp" || rc=1; exit $$rc

## bench: the scale benchmark side by side with hydra-maester (built once into the cache);
## prints a table, writes target/bench/*.json and a PNG; never fails on a number.
## BENCH_QUICK=1 runs every workload at small N (as `make test` does).
bench: testenv
	bash scripts/build-hydra-maester.sh
	$(CARGO) bench --bench scale

fmt:
	$(CARGO) fmt --all

fmt-check:
	$(CARGO) fmt --all -- --check

clippy:
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) clippy --workspace --all-targets $(TEST_FEATURES) -- -D warnings

lint: fmt-check clippy crds-check

CRD_FILES := crds/oauth-operator.dev.yaml charts/oauth-operator/crds/oauth-operator.dev.yaml deploy/base/crds/oauth-operator.dev.yaml

## crds: regenerate crds/ (and the chart's copy) from the Rust types
crds:
	$(CARGO) run --quiet --bin oauth-operator -- crd > crds/oauth-operator.dev.yaml
	cp crds/oauth-operator.dev.yaml charts/oauth-operator/crds/oauth-operator.dev.yaml
	cp crds/oauth-operator.dev.yaml deploy/base/crds/oauth-operator.dev.yaml

## crds-check: fail when crds/ or the chart's copy is stale
crds-check:
	@for f in $(CRD_FILES); do \
	  $(CARGO) run --quiet --bin oauth-operator -- crd | diff -u $$f - >/dev/null \
	    || { echo "$$f is stale: run 'make crds' and commit the result" >&2; exit 1; }; \
	done

## fault-check: a build without the test feature refuses OAUTH_OPERATOR_FAULT, so no
## configuration value can make a shipped binary abort
fault-check:
	@out=$$(OAUTH_OPERATOR_FAULT=after-create $(CARGO) run --quiet --bin oauth-operator -- run --http-addr 127.0.0.1:0 2>&1) \
	  && { echo "a build without fault-injection accepted OAUTH_OPERATOR_FAULT" >&2; exit 1; }; \
	  grep -q "no fault injection" <<<"$$out" || { echo "unexpected: $$out" >&2; exit 1; }; \
	  echo "fault-check: the default build refuses OAUTH_OPERATOR_FAULT"

## run: local control plane + Clerk emulator (or real Clerk with CLERK_SECRET_KEY) + examples/ + the operator
run:
	bash scripts/run-local.sh

## image: the container image (Dockerfile: FROM scratch, the static release binary, user
## 65532) with buildah, podman or docker; pulls nothing (scripts/image.sh)
image:
	bash scripts/image.sh

clean-testenv:
	rm -rf "$(TESTENV_DIR)"
