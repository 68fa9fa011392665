package dist

import (
	"os"
	"regexp"
	"testing"
)

// TestDocQuotesInitramfsFiles: docs/initramfs-tools.md and docs/dracut.md
// quote every file of their integration as it is (the markers of
// docs/systemd.md).
func TestDocQuotesInitramfsFiles(t *testing.T) {
	for doc, files := range map[string][]string{
		"../docs/initramfs-tools.md": {"initramfs-tools/hooks/cpinit", "initramfs-tools/scripts/local-bottom/cpinit", "initramfs-tools/install.sh"},
		"../docs/dracut.md": {"dracut/90cpinit/module-setup.sh", "dracut/90cpinit/cpinit-boot-step.service",
			"dracut/90cpinit/cpinit-boot-step.sh", "dracut/90cpinit/cpinit-pre-pivot.sh", "dracut/install.sh"},
	} {
		b, err := os.ReadFile(doc)
		if err != nil {
			t.Fatal(err)
		}
		re := regexp.MustCompile("(?s)<!-- file: dist/([^ ]+) -->\n```[a-z]*\n(.*?)```\n")
		quoted := map[string]string{}
		for _, m := range re.FindAllStringSubmatch(string(b), -1) {
			quoted[m[1]] = m[2]
		}
		for _, src := range files {
			b, err := os.ReadFile(src)
			if err != nil {
				t.Fatal(err)
			}
			if q, ok := quoted[src]; !ok {
				t.Errorf("%s does not quote dist/%s", doc, src)
			} else if q != string(b) {
				t.Errorf("%s quotes dist/%s differently from the file; copy the file into the doc", doc, src)
			}
			delete(quoted, src)
		}
		for src := range quoted {
			t.Errorf("%s quotes dist/%s, which is not one of its files", doc, src)
		}
	}
}
