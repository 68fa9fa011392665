// Package distroinitvm holds the QEMU tests of cpinit in a distribution's
// initramfs (issue 19 points 4 to 6): the real mkinitramfs of Debian
// bookworm's initramfs-tools and the real dracut 059, run in a chroot of
// a debootstrapped tree (qemutests.DebianInitramfsRoot) with cpinit's
// dist/initramfs-tools and dist/dracut installed by their install
// scripts, build the initramfs the pinned kernel boots on the simulated
// A/B device, whose slots are Debian systems
// (qemutests.MakeDebianSlotImage). Each image takes an update through a
// commit and through a rollback, checked with exact manifests of
// userdata from the host.
package distroinitvm
