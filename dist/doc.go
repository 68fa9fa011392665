// Package dist holds files cpinit ships for the running system rather than
// Go code: the systemd units in dist/systemd (docs/systemd.md), the
// update agents' integrations, dist/rauc (docs/rauc.md), dist/mender
// (docs/mender.md) and dist/swupdate (docs/swupdate.md), and the
// distribution initramfs integrations, dist/initramfs-tools
// (docs/initramfs-tools.md) and dist/dracut (docs/dracut.md). Its tests
// install them into a temporary root, check the units with
// systemd-analyze and the scripts with stand-ins, and check that the
// documentation quotes them as they are; the QEMU tests in
// qemu-tests/agentvm run them with the real agents, those in
// qemu-tests/distroinitvm with the real mkinitramfs and dracut.
package dist
