package dist

import "testing"

// TestDocQuotesInitramfsFiles: docs/initramfs-tools.md and docs/dracut.md
// quote every file of their integration as it is (the markers of
// docs/systemd.md).
func TestDocQuotesInitramfsFiles(t *testing.T) {
	docQuotes(t, "../docs/initramfs-tools.md", "initramfs-tools/hooks/cpinit", "initramfs-tools/scripts/local-bottom/cpinit", "initramfs-tools/install.sh")
	docQuotes(t, "../docs/dracut.md", "dracut/90cpinit/module-setup.sh", "dracut/90cpinit/cpinit-boot-step.service",
		"dracut/90cpinit/cpinit-boot-step.sh", "dracut/90cpinit/cpinit-pre-pivot.sh", "dracut/install.sh")
}
