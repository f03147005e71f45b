# api-key-rotator — every target here works on a fresh machine with the Rust toolchain;
# test-sdk, test-e2e, test-enterprise and bench also need what .ci/run installs.

CARGO   ?= cargo
BIN     := target/release/api-key-rotator
IMAGE   ?= api-key-rotator
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)

.PHONY: help run build build-enterprise-bin test test-sdk test-e2e test-enterprise test-images test-all \
        lint fmt fuzz soak bench dist info build-lightweight build-enterprise build-all \
        test-lightweight publish-lightweight publish-enterprise publish-all clean

help:
	@echo "make run              run the lightweight build (needs ADMIN_PASSWORD, JWT_SECRET, GLOBAL_PROXY_KEYS)"
	@echo "make test             unit and integration tests (Rust toolchain only)"
	@echo "make test-sdk         official OpenAI/Anthropic/Gemini SDKs against the release binary"
	@echo "make test-e2e         the admin page in headless Chromium"
	@echo "make test-enterprise  MySQL store and Redis rotation against the local MariaDB and Redis"
	@echo "make bench            benchmarks against nginx and direct (docs/BENCHMARKS.md)"
	@echo "make fuzz             every fuzz target for FUZZ_SECONDS (60) each (docs/FUZZING.md)"
	@echo "make soak             30 minutes of traffic with faults (SOAK_ENTERPRISE=1: MariaDB, Redis restarted)"
	@echo "make dist             both release binaries (profile-guided: scripts/pgo.sh), checked and measured"
	@echo "make test-images      both images (from make dist's static binaries) run as users run them; needs docker.io"

run:
	$(CARGO) run --release --

build:
	$(CARGO) build --release

build-enterprise-bin:
	$(CARGO) build --release --features enterprise

test:
	$(CARGO) test

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets --all-features -- -D warnings

fmt:
	$(CARGO) fmt

test-sdk: build
	tests/sdk/run.sh
	@echo "--- again, with the upstream keys encrypted at rest (ENCRYPTION_KEY) ---"
	SDK_ENCRYPTION_KEY=sdk-suite-encryption-key-0123456789abcdef tests/sdk/run.sh

test-e2e: build
	cd tests/e2e && npm ci --no-audit --no-fund --silent && ROTATOR_BIN=$(CURDIR)/$(BIN) node run.mjs

test-enterprise:
	scripts/test-enterprise.sh

test-lightweight: test

test-all: test test-enterprise test-sdk test-e2e

fuzz:
	scripts/fuzz.sh

soak:
	if [ "$(SOAK_ENTERPRISE)" = 1 ]; then $(CARGO) build --release --features enterprise; else $(CARGO) build --release; fi
	python3 scripts/soak.py

bench:
	benches/run.sh

dist:
	scripts/dist.sh

test-images:
	scripts/test-images.sh

info:
	@echo "api-key-rotator $(VERSION)"
	@echo "  lightweight: SQLite + in-memory rotation    (cargo build --release)"
	@echo "  enterprise:  MySQL + Redis, several instances (cargo build --release --features enterprise)"
	@echo "  images:      $(IMAGE):lightweight, $(IMAGE):enterprise"

# Container images (need a Docker engine).
build-lightweight:
	docker build -f Dockerfile.lightweight -t $(IMAGE):lightweight -t $(IMAGE):$(VERSION)-lightweight .

build-enterprise:
	docker build -f Dockerfile.enterprise -t $(IMAGE):enterprise -t $(IMAGE):$(VERSION)-enterprise .

build-all: build-lightweight build-enterprise

publish-lightweight: build-lightweight
	docker push $(IMAGE):lightweight
	docker push $(IMAGE):$(VERSION)-lightweight

publish-enterprise: build-enterprise
	docker push $(IMAGE):enterprise
	docker push $(IMAGE):$(VERSION)-enterprise

publish-all: publish-lightweight publish-enterprise

clean:
	$(CARGO) clean
	rm -rf tests/e2e/node_modules tests/sdk/.venv
