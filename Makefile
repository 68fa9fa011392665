# cpinit: the two commands a newcomer runs (see README.md).
#
#   make demo   the main job: boot cpinit in QEMU and show what it does
#   make test   every test: unit tests on the host, then the QEMU suite
#
# Both install missing Debian packages (when run as root) and fetch the
# pinned kernel first. Go 1.26 must be on PATH (/usr/local/go/bin is added).

export PATH := /usr/local/go/bin:$(PATH)
GO ?= go

# Debian packages the build and tests use:
#   qemu-system-x86  the VM that runs every device-mapper path (TCG)
#   e2fsprogs        mkfs.ext4, e2fsck, filefrag (FIEMAP oracle)
#   dmsetup          the oracle our dm ioctls are compared with, in the guest
#   xfsprogs         reflinked files for the SHARED-extent test
#   util-linux       losetup, for the loop-mounted ext4 tests
#   cpio             to look inside initramfs images by hand
#   qemu-utils       qemu-io, QEMU's NBD client on the host, for the tests of
#                    qemu-tests/cachedisk (the disk that loses its cache)
#   libubootenv-tool fw_printenv/fw_setenv and u-boot-tools mkenvimage: the
#   u-boot-tools     oracles pkg/bootstate's U-Boot environment is compared
#                    with, byte for byte, in both directions
#   u-boot-qemu      the real U-Boot (its qemu-x86 board) that
#                    qemu-tests/bootloadervm/uboot_test.go boots under RAUC's scheme
#   qemu-user-static qemu-aarch64/qemu-arm: make cross runs the arm64 and
#                    32-bit ARM test binaries of the pure packages with them
#   qemu-system-arm  qemu-system-aarch64: make test-arm64 boots the arm64
#                    kernel (initramfs/kernel-arm64.env) on its virt board (TCG)
#   debootstrap      installs the real Debian bookworm system (systemd, rauc,
#                    swupdate, mender-client) of the Debian slot:
#                    qemu-tests/fetch-debian-root.sh, qemu-tests/debianimage.go
#   squashfs-tools   mksquashfs/unsquashfs on the host, for the squashfs images
#                    (RAUC bundles) the Debian slot's tests make and read
#   openssl          the test key and certificate the update bundles are
#                    signed with (qemu-tests/agentvm)
#   fdisk            sfdisk, for the GPT disk whose partitions 2 and 3 are
#                    the slots of the Mender and SWUpdate tests
#   xz-utils, zstd   compress modules as the kernel's modules_install does,
#                    for the tests of compressed modules (internal/pid1,
#                    initramfs, qemu-tests TestBootCompressedModules), and
#                    fetch-kernel.sh's decompression of the 6.12 kernel's
DEB_PACKAGES := qemu-system-x86 e2fsprogs dmsetup xfsprogs util-linux cpio fio systemd f2fs-tools qemu-utils libubootenv-tool u-boot-tools grub-common systemd-boot ovmf grub-efi-amd64-bin mtools dosfstools u-boot-qemu qemu-user-static qemu-system-arm debootstrap squashfs-tools openssl fdisk xz-utils zstd

# The whole suite runs within this bound (CI allows 90 minutes in all).
TEST_TIMEOUT ?= 45m

.PHONY: all demo test unit vmtest deps kernel initramfs clean bench soak cross test-arm64 test-arm32 test-agents test-initramfs

all: test

deps:
	@missing=""; for p in $(DEB_PACKAGES); do \
		dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" = 0 ]; then \
			echo "installing Debian packages:$$missing"; \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
		else \
			echo "missing Debian packages:$$missing (run make as root, or apt-get install them)"; exit 1; \
		fi; \
	fi

kernel: deps
	@initramfs/fetch-kernel.sh >/dev/null
	@KERNEL_ENV=kernel-generic.env initramfs/fetch-kernel.sh >/dev/null
	@KERNEL_ENV=kernel-arm64.env initramfs/fetch-kernel.sh >/dev/null

initramfs: kernel
	$(GO) run ./initramfs/mkinitramfs -o out/cpinit.cpio ./cmds/cpinit

# make demo ARCH=arm64 runs it on an arm64 device (qemu-system-aarch64);
# ARCH is a GOARCH with a pinned kernel (initramfs/kernel-$(ARCH).env),
# default the host's (amd64: initramfs/kernel.env).
demo: kernel
	$(GO) run ./qemu-tests/demo $(if $(filter-out amd64,$(ARCH)),-kernel kernel-$(ARCH).env)

# Unit tests, root-only host tests (loop-mounted ext4) and the QEMU suite
# (qemu-tests/, which also runs the in-guest tests of pkg/dmsnap).
# The tests that make test leaves to make soak (time: make test stays within
# 20 minutes on 2 cores): the real-bootloader tests but GRUB's and U-Boot's
# crash-until-fallback rollbacks (the soak boots every path of GRUB,
# systemd-boot and U-Boot: commit, crash until fallback, `cpinit rollback`),
# and the cache-cut campaign on f2fs userdata (make test cuts ext4's;
# f2fsvm runs the f2fs lifecycle uncut). Of ext4's cache-losing campaign
# make test makes one round of its cut points (CPINIT_CACHECUTS=0: every
# flush of the store and misc cpinit issues, userdata's first, middle and
# last of each boot; make soak makes SOAK_CUTS), and of the arm64 suite it
# runs the lifecycle (CPINIT_ARM64=core). A fresh clone's make test took
# 32m35s on 2026-12-07 with 50 cuts and the arm64 power cuts.
SOAK_ONLY := TestCacheCutF2FS$$|TestGRUBUpdateCommits$$|TestGRUBRollbackCommand$$|TestSystemdBootUpdateCommits$$|TestSystemdBootUpdateCrashFallsBack$$|TestSystemdBootRollbackCommand$$|TestUBootUpdateCommits$$|TestUBootRollbackCommand$$
test: kernel cross
	@$(GO) mod tidy -diff || { echo "make test: go.mod or go.sum is not tidy: run go mod tidy and commit the result"; exit 1; }
	$(GO) vet ./...
	CPINIT_ARM64=core CPINIT_CACHECUTS=0 $(GO) test -timeout $(TEST_TIMEOUT) -skip '$(SOAK_ONLY)' ./...

# The update agents (issue 19): the real rauc, swupdate and mender of
# Debian bookworm in a debootstrapped Debian slot, each through an update
# that commits and one that rolls back (qemu-tests/agentvm), and the Debian
# slot's own smoke test. make soak runs this target; make test runs none
# of them: with RAUC's rollback in it (CPINIT_DEBIAN=core: a debootstrap
# and three Debian boots, about 3 minutes) a fresh clone's make test took
# 23m48s on 2026-12-06, past its 20 minutes.
AGENT_PKGS := ./qemu-tests/agentvm ./qemu-tests
test-agents: kernel
	CPINIT_DEBIAN=1 $(GO) test -p 1 -timeout 60m -v -run 'TestDebianSlotBoots$$|TestRAUC|TestMender|TestSWUpdate' $(AGENT_PKGS)

# A distribution's initramfs (issue 19 points 4-6): images built by the
# real mkinitramfs (initramfs-tools) and dracut of Debian bookworm with
# dist/initramfs-tools and dist/dracut, booted with Debian slots through
# commits, rollbacks and a fatal boot step (qemu-tests/distroinitvm;
# about 5 minutes on 2 quiet cores, two boots at a time). Debian-slot
# tests, selected by CPINIT_DEBIAN=1 like the agents'; make test runs
# none of them (their build tree would cost it another debootstrap), make
# soak runs this target.
test-initramfs: kernel
	CPINIT_DEBIAN=1 $(GO) test -timeout 30m -v ./qemu-tests/distroinitvm

# The other architectures (issue 18): everything builds and vets for arm64,
# 32-bit ARM (GOARM=7) and 386; the pure packages' tests (byte layouts of
# the dm ioctls, the COW table, the records and bootloader environments,
# FIEMAP buffers, on loop-mounted ext4 as root) run as arm64 and ARM
# binaries under qemu-user, and as 386 binaries natively where the x86-64
# kernel runs them (qemu-i386 7.2 crashes Go's runtime; some hosts' kernels
# refuse 32-bit binaries: then the run is skipped, loudly), cmds/cpinit included:
# the 386 run is the one with a 32-bit int that also does FIFREEZE and
# re-executes itself, which qemu-user cannot (no FIFREEZE; no binfmt here).
# Vet covers what ships (the harness under qemu-tests/ and initramfs/ runs on
# the x86-64 host only; compiling its dependencies for three more
# architectures would cost make test a minute).
CROSS_PKGS := ./pkg/... ./internal/...
CROSS_VET := ./cmds/... ./pkg/... ./internal/...
cross: deps
	GOARCH=arm64 $(GO) vet $(CROSS_VET)
	GOARCH=arm GOARM=7 $(GO) vet $(CROSS_VET)
	GOARCH=386 $(GO) vet $(CROSS_VET)
	GOARCH=arm64 $(GO) test -short -exec qemu-aarch64-static $(CROSS_PKGS)
	GOARCH=arm GOARM=7 $(GO) test -short -exec qemu-arm-static $(CROSS_PKGS)
	@probe=$$(mktemp -d); printf 'package main\n\nfunc main() {}\n' >$$probe/m.go; \
	if (cd $$probe && GOARCH=386 $(GO) build -o m m.go) && $$probe/m 2>/dev/null; then \
		rm -rf $$probe; echo "GOARCH=386 $(GO) test -short $(CROSS_PKGS) ./cmds/..."; \
		GOARCH=386 $(GO) test -short $(CROSS_PKGS) ./cmds/...; \
	else \
		rm -rf $$probe; \
		echo "make cross: SKIPPING the 386 test run: this kernel ($$(uname -r)) cannot execute 32-bit x86 binaries (IA32 emulation off or refused), and qemu-i386 7.2 crashes Go's runtime; 386 was vetted above"; \
	fi

# The arm64 tests (issue 18): the arm64 kernel (initramfs/kernel-arm64.env)
# booted by qemu-system-aarch64 on its virt board under TCG, cpinit, the
# slots' programs and the test binaries built for arm64 (Debian's arm64
# dmsetup and e2fsprogs in the guest): the image build, a boot to
# switch_root, the in-guest tests of pkg/dmsnap (with its merge's and
# restore's cuts at counted flushes), pkg/fiemap (with its allocation
# cuts) and cmds/cpinit, the lifecycle (commit; crash until fallback and
# the kernel's merge; abort and the offline restore), 4 SIGKILL power cuts
# (TestArm64PowerCut, one device) and the cache-losing cuts of the
# rollback's merge boot (TestArm64CacheCut). One QEMU at a time (-p 1
# -parallel 1), so it can run beside other work. make test runs only the
# lifecycle (CPINIT_ARM64=core, about 2 minutes of one core; the rest
# would not fit its 20 minutes on 2 cores); the
# others skip, saying so, without CPINIT_ARM64=1. make soak runs them too,
# with SOAK_ARM64_CUTS cuts.
ARM64_TESTS := Arm64
ARM64_PKGS := ./initramfs ./qemu-tests ./qemu-tests/dmsnapvm ./qemu-tests/fiemapvm ./qemu-tests/cpinitvm ./qemu-tests/cachecutvm
test-arm64: kernel
	CPINIT_ARM64=1 CPINIT_POWERCUT_DEVICES=1 $(GO) test -p 1 -parallel 1 -timeout 30m -v -run '$(ARM64_TESTS)' $(ARM64_PKGS)

# 32-bit ARM (issue 18 point 5): Debian's armmp kernel
# (initramfs/kernel-armhf.env) on qemu-system-arm -M virt -cpu cortex-a15
# under TCG, cpinit built with GOARCH=arm GOARM=7: a boot to switch_root and
# the lifecycle (commit; crash until fallback and the kernel's merge; abort
# and the offline restore) with exact manifests. make soak runs it too.
ARM32_TESTS := Arm32
test-arm32:
	@KERNEL_ENV=kernel-armhf.env initramfs/fetch-kernel.sh >/dev/null
	CPINIT_ARM32=1 $(GO) test -p 1 -parallel 1 -timeout 30m -v -run '$(ARM32_TESTS)' ./initramfs ./qemu-tests

# The long power-cut campaigns, not part of `make test`: SOAK_CUTS cuts of
# the cache-losing campaign on ext4 userdata (TestCacheCut: cuts at counted
# flushes of the store, misc and userdata, on disks that drop their
# volatile cache, half of the cuts the whole cache), SOAK_F2FS_CUTS of it on
# f2fs userdata over every boot of both cycles (TestCacheCutF2FS), and
# SOAK_CUTS SIGKILL cuts at seeded times (TestPowerCut; make test makes 4). Each prints its seed first; replay with
# CPINIT_CACHECUT_SEED= / CPINIT_SEED=. Figures: docs/TESTING.md. It also
# runs the arm64 tests (make test-arm64's, CPINIT_ARM64=1), with
# SOAK_ARM64_CUTS SIGKILL cuts on arm64 devices and as many cache-losing
# cuts over every boot of both cycles (TestArm64CacheCut), and the A/B
# device tests of qemu-tests on arm64 devices (CPINIT_ARCH=arm64: the bad
# inputs, issue 14's safety tests, watch; about 6 minutes).
SOAK_CUTS ?= 200
SOAK_F2FS_CUTS ?= 100
SOAK_ARM64_CUTS ?= 50
ARM64_DEVICE_TESTS := TestBadInput|TestRecovery|TestPowerCutAbandonOnUpdateSlot$$|TestPowerCutInsideMergeCommand$$|TestWatch
soak: kernel
	CPINIT_CACHECUTS=$(SOAK_CUTS) CPINIT_CACHECUTS_F2FS=$(SOAK_F2FS_CUTS) CPINIT_CACHECUT_F2FS_ALL=1 CPINIT_POWERCUTS=$(SOAK_CUTS) CPINIT_ARM64=1 CPINIT_ARM64_POWERCUTS=$(SOAK_ARM64_CUTS) CPINIT_ARM64_CACHECUTS=$(SOAK_ARM64_CUTS) \
		$(GO) test -p 1 -timeout 4h -v -run 'TestCacheCut$$|TestCacheCutF2FS$$|TestPowerCut$$|$(SOAK_ONLY)|$(ARM64_TESTS)' $(ARM64_PKGS) ./qemu-tests/bootloadervm
	CPINIT_ARCH=arm64 $(GO) test -p 1 -timeout 1h -v -run '$(ARM64_DEVICE_TESTS)' ./qemu-tests
	$(MAKE) test-arm32
	$(MAKE) test-agents
	$(MAKE) test-initramfs

# pkg/dmsnap's checkpoint benchmark: one QEMU boot prints write cost through
# snapshot-origin and merge throughput, as ratios to the raw device and dd
# (results and machine in docs/BENCHMARKS.md). Not part of `make test`.
bench: kernel
	$(GO) run ./qemu-tests/bench

clean:
	rm -rf out

# make install / make uninstall (issue 20): what a distribution's package
# of cpinit holds, under DESTDIR (a staging root) and PREFIX (GNU
# conventions: PREFIX=/usr for a package, /usr/local by hand). Nothing
# here builds a kernel or boots QEMU. Where each file goes and why:
# docs/integration.md, "Installing: make install".
#
#   BINDIR      the static binary cpinit (CGO_ENABLED=0), VERSION stamped
#   UNITDIR     dist/systemd's cpinit-commit.service, cpinit-watch.service
#               (not enabled: `systemctl enable` is the administrator's)
#   DRACUTMODDIR, INITRAMFSTOOLSDIR
#               the initramfs integrations (dist/dracut/90cpinit,
#               dist/initramfs-tools); dracut and initramfs-tools read only
#               /usr/lib/dracut/modules.d and /usr/share/initramfs-tools, so
#               with another PREFIX point these there or they stay inert
#   DATADIR/cpinit/agents/{rauc,mender,swupdate}
#               the update agents' integrations with their install.sh,
#               which an integrator runs for the one agent the device uses
#   DOCDIR      README.md, LICENSE, docs/, examples/ (the health check)
#
# Installed text files name the binary $(BINDIR)/cpinit (sed; the same
# text for PREFIX=/usr), except the initramfs-tools boot script, which
# runs cpinit where the hook copies it inside the image, /usr/bin/cpinit.
# make uninstall removes exactly the files of INSTALL_FILES (the list
# install uses), then the directories only cpinit's files were in.
PREFIX ?= /usr
BINDIR ?= $(PREFIX)/bin
LIBDIR ?= $(PREFIX)/lib
DATADIR ?= $(PREFIX)/share
UNITDIR ?= $(LIBDIR)/systemd/system
DRACUTMODDIR ?= $(LIBDIR)/dracut/modules.d
INITRAMFSTOOLSDIR ?= $(DATADIR)/initramfs-tools
DOCDIR ?= $(DATADIR)/doc/cpinit
AGENTDIR = $(DATADIR)/cpinit/agents
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo unknown)

# DESTINATION:SOURCE:MODE[:raw] (raw: installed as it is, no sed; a
# symbolic link is installed as the same link)
INSTALL_FILES = \
	$(BINDIR)/cpinit:out/install/cpinit:755:raw \
	$(UNITDIR)/cpinit-commit.service:dist/systemd/cpinit-commit.service:644 \
	$(UNITDIR)/cpinit-watch.service:dist/systemd/cpinit-watch.service:644 \
	$(foreach f,$(wildcard dist/dracut/90cpinit/*.sh),$(DRACUTMODDIR)/90cpinit/$(notdir $(f)):$(f):755) \
	$(DRACUTMODDIR)/90cpinit/cpinit-boot-step.service:dist/dracut/90cpinit/cpinit-boot-step.service:644 \
	$(INITRAMFSTOOLSDIR)/hooks/cpinit:dist/initramfs-tools/hooks/cpinit:755 \
	$(INITRAMFSTOOLSDIR)/scripts/local-bottom/cpinit:dist/initramfs-tools/scripts/local-bottom/cpinit:755:raw \
	$(foreach f,$(filter-out %_test.go,$(wildcard dist/rauc/* dist/mender/* dist/swupdate/*)),$(AGENTDIR)/$(f:dist/%=%):$(f):$(if $(shell test -x $(f) && echo x),755,644)) \
	$(DOCDIR)/README.md:README.md:644 \
	$(DOCDIR)/LICENSE:LICENSE:644 \
	$(foreach f,$(filter-out %_test.go,$(wildcard docs/*)),$(DOCDIR)/$(f):$(f):644) \
	$(DOCDIR)/examples/cpinit-health-check.service:dist/systemd/examples/cpinit-health-check.service:644

# The directories install makes that hold nothing but cpinit's files:
# uninstall removes them once empty (deepest first).
INSTALL_OWNDIRS := $(DOCDIR)/examples $(DOCDIR)/docs $(DOCDIR) \
	$(AGENTDIR)/rauc $(AGENTDIR)/mender $(AGENTDIR)/swupdate $(AGENTDIR) $(DATADIR)/cpinit \
	$(DRACUTMODDIR)/90cpinit

.PHONY: build install uninstall

# The binary make install installs: static, stamped with VERSION
# (cmds/cpinit/version.go; go version -m shows the -X flag, which
# -trimpath would leave out of the build settings).
build:
	CGO_ENABLED=0 $(GO) build -ldflags "-X main.version=$(VERSION)" -o out/install/cpinit ./cmds/cpinit

install: build
	@set -e; for e in $(INSTALL_FILES); do \
		dst=$$(echo "$$e" | cut -d: -f1); src=$$(echo "$$e" | cut -d: -f2); \
		mode=$$(echo "$$e" | cut -d: -f3); raw=$$(echo "$$e" | cut -d: -f4); \
		mkdir -p "$(DESTDIR)$$(dirname "$$dst")"; \
		if [ -L "$$src" ]; then \
			ln -sfn "$$(readlink "$$src")" "$(DESTDIR)$$dst"; \
		elif [ -n "$$raw" ]; then \
			install -m "$$mode" "$$src" "$(DESTDIR)$$dst"; \
		else \
			sed 's|/usr/bin/cpinit|$(BINDIR)/cpinit|g' "$$src" >"$(DESTDIR)$$dst.tmp"; \
			chmod "$$mode" "$(DESTDIR)$$dst.tmp"; mv -f "$(DESTDIR)$$dst.tmp" "$(DESTDIR)$$dst"; \
		fi; \
		echo "installed $(DESTDIR)$$dst"; \
	done

uninstall:
	@set -e; for e in $(INSTALL_FILES); do \
		dst=$$(echo "$$e" | cut -d: -f1); \
		if [ -e "$(DESTDIR)$$dst" ] || [ -L "$(DESTDIR)$$dst" ]; then rm -f "$(DESTDIR)$$dst"; echo "removed $(DESTDIR)$$dst"; fi; \
	done; \
	for d in $(INSTALL_OWNDIRS); do \
		if [ -d "$(DESTDIR)$$d" ]; then rmdir "$(DESTDIR)$$d" 2>/dev/null || echo "kept $(DESTDIR)$$d: not empty"; fi; \
	done
