# snapdump — the two set-up commands of the README are `make demo` and `make test`.
# Both install the Debian packages they need (as root) and build.

SWIFT ?= swift
GUEST_DIR ?= $(CURDIR)/.build/test-guest
export SNAPDUMP_GUEST_DIR := $(GUEST_DIR)

.PHONY: all deps build release guest test unit-test fixtures-up fixtures-down demo bench clean

all: build

deps:
	scripts/install-deps.sh

build: deps
	$(SWIFT) build

release: deps
	$(SWIFT) build -c release

guest: deps
	scripts/test-guest/build.sh $(GUEST_DIR)

# Everything: unit and integration tests on real loop filesystems, zfs-fuse and QEMU.
test: deps
	scripts/run-tests.sh

# Unit tests only (no fixtures, no root needed).
unit-test:
	SNAPDUMP_FIXTURE_ENV=/dev/null SNAPDUMP_INTEGRATION= $(SWIFT) test

fixtures-up: deps
	scripts/fixtures/setup.sh

fixtures-down:
	scripts/fixtures/teardown.sh

demo: deps
	scripts/demo.sh

bench: deps
	scripts/bench/run.sh

clean:
	rm -rf .build
