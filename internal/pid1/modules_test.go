package pid1

import (
	"reflect"
	"strings"
	"testing"
)

func TestParseModuleList(t *testing.T) {
	in := "# comment\ndm-mod\n\n  dm-snapshot  # the target\nvirtio_blk\n"
	got, err := ParseModuleList(strings.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"dm-mod", "dm-snapshot", "virtio_blk"}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got %q, want %q", got, want)
	}
}

func TestParseStopAction(t *testing.T) {
	for _, s := range []string{"poweroff", "halt", "reboot"} {
		if a, err := ParseStopAction(s); err != nil || string(a) != s {
			t.Errorf("ParseStopAction(%q) = %q, %v", s, a, err)
		}
	}
	if _, err := ParseStopAction("explode"); err == nil || !strings.Contains(err.Error(), "explode") {
		t.Errorf("ParseStopAction(explode) error = %v, want one naming the input", err)
	}
}

func TestSplitDeviceMapper(t *testing.T) {
	early, dm := SplitDeviceMapper([]string{"virtio", "dm-mod", "virtio_blk", "dm_bufio", "dm-snapshot", "dmi_sysfs"})
	if strings.Join(early, " ") != "virtio virtio_blk dmi_sysfs" || strings.Join(dm, " ") != "dm-mod dm_bufio dm-snapshot" {
		t.Errorf("early %q, dm %q", early, dm)
	}
}
