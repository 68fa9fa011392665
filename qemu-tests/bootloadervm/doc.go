// Package bootloadervm boots the real bootloaders in QEMU: GRUB and
// systemd-boot under OVMF, U-Boot as the BIOS of QEMU's PC. Each picks
// every slot from the state cpinit reads and writes (RAUC's grubenv,
// systemd-boot's counted entries, RAUC's U-Boot environment): an update
// that commits, one that crashes until the bootloader falls back, and
// `cpinit rollback`. It is its own package so that `go test ./...` runs
// it beside the other QEMU suites; make test runs the crash-until-fallback
// tests of GRUB and U-Boot, make soak all of them (Makefile SOAK_ONLY).
package bootloadervm
