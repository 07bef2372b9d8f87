# snapdump — the two set-up commands of the README are `make demo` and `make test`.
# Both install the Debian packages they need (as root) and build.

SWIFT ?= swift
GUEST_DIR ?= $(CURDIR)/.build/test-guest
export SNAPDUMP_GUEST_DIR := $(GUEST_DIR)

# Installation directories (`make install PREFIX=/usr DESTDIR=/tmp/stage`).
# The sample configs go to /etc/snapdump whatever the prefix: snapdump reads
# its configuration there.
PREFIX ?= /usr/local
DESTDIR ?=
BINDIR ?= $(PREFIX)/bin
MANDIR ?= $(PREFIX)/share/man
SYSCONFDIR ?= /etc
LOCALSTATEDIR ?= /var
SYSTEMDUNITDIR ?= $(PREFIX)/lib/systemd/system
BASHCOMPDIR ?= $(PREFIX)/share/bash-completion/completions
ZSHCOMPDIR ?= $(PREFIX)/share/zsh/site-functions
FISHCOMPDIR ?= $(PREFIX)/share/fish/vendor_completions.d

# The self-contained release build (Swift runtime linked in) has a build
# directory of its own: --static-swift-stdlib compiles every module against
# the static runtime, so sharing .build with the ordinary builds would
# rebuild everything at each switch.
STATIC_BUILD := .build/static
STATIC_BIN := $(STATIC_BUILD)/release
# Generated man pages and completions, the package staging root and the .deb.
BUILD := build

.PHONY: all deps build release docs install install-files deb package-test guest test unit-test fixtures-up fixtures-down demo bench clean

all: build

deps:
	scripts/install-deps.sh

build: deps
	$(SWIFT) build

# Self-contained binaries: only Debian's libraries (libc, libzstd, libnbd, libssl, zlib) are
# loaded, and only from the system's directories (no $ORIGIN run path).
release: deps
	# By product: a plain build would also build TestSupport, which needs swift-testing (tests only).
	$(SWIFT) build -c release --static-swift-stdlib --disable-local-rpath --scratch-path $(STATIC_BUILD) --product snapdump
	$(SWIFT) build -c release --static-swift-stdlib --disable-local-rpath --scratch-path $(STATIC_BUILD) --product snapdumpd
	scripts/package/check-static.sh $(STATIC_BIN)/snapdump $(STATIC_BIN)/snapdumpd

# Man pages and shell completions from the ArgumentParser definitions.
docs: release
	SWIFT=$(SWIFT) scripts/package/generate-docs.sh $(BUILD) $(STATIC_BIN)

install: docs
	$(MAKE) --no-print-directory install-files

# Installs what `release` and `docs` built; configs already in /etc/snapdump are kept.
# /var/lib/vz is the path of the sample storage.cfg's `local` storage, as in Proxmox VE.
install-files:
	install -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(MANDIR)/man1 $(DESTDIR)$(SYSTEMDUNITDIR) \
		$(DESTDIR)$(BASHCOMPDIR) $(DESTDIR)$(ZSHCOMPDIR) $(DESTDIR)$(FISHCOMPDIR) $(DESTDIR)$(SYSCONFDIR)/snapdump \
		$(DESTDIR)$(LOCALSTATEDIR)/lib/vz
	install -s -m 755 $(STATIC_BIN)/snapdump $(STATIC_BIN)/snapdumpd $(DESTDIR)$(BINDIR)/
	install -m 644 $(BUILD)/man/man1/*.1 $(DESTDIR)$(MANDIR)/man1/
	sed 's|^ExecStart=/usr/local/bin/|ExecStart=$(BINDIR)/|' contrib/snapdumpd.service >$(DESTDIR)$(SYSTEMDUNITDIR)/snapdumpd.service
	chmod 644 $(DESTDIR)$(SYSTEMDUNITDIR)/snapdumpd.service
	install -m 644 $(BUILD)/completions/bash/* $(DESTDIR)$(BASHCOMPDIR)/
	install -m 644 $(BUILD)/completions/zsh/* $(DESTDIR)$(ZSHCOMPDIR)/
	install -m 644 $(BUILD)/completions/fish/* $(DESTDIR)$(FISHCOMPDIR)/
	for f in contrib/etc/snapdump/*; do \
		t=$(DESTDIR)$(SYSCONFDIR)/snapdump/$${f##*/}; \
		[ -e "$$t" ] || install -m 644 "$$f" "$$t"; \
	done

# build/snapdump_<version>_<arch>.deb; the version is what the built snapdump --version says.
deb: docs
	rm -rf $(BUILD)/deb-root
	$(MAKE) --no-print-directory install-files DESTDIR=$(CURDIR)/$(BUILD)/deb-root PREFIX=/usr \
		SYSTEMDUNITDIR=/lib/systemd/system ZSHCOMPDIR=/usr/share/zsh/vendor-completions
	scripts/package/build-deb.sh $(BUILD)/deb-root $(BUILD)

# The .deb installed into a fresh debootstrap'd Debian 12 root and run there (part of `make test`).
package-test: deb
	scripts/package/test-deb.sh $(BUILD)/snapdump_*_$$(dpkg --print-architecture).deb

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
	rm -rf .build $(BUILD)
