package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/cpinit/cpinit/internal/testutil"
	"golang.org/x/sys/unix"
)

func sh(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// TestExtentsCLI runs `cpinit extents` on a fallocated file in a
// loop-mounted ext4 image and checks the table against filefrag (e2fsprogs)
// and the loop device's numbers.
func TestExtentsCLI(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.LookPath(t, "mkfs.ext4")
	testutil.LookPath(t, "filefrag")
	testutil.LookPath(t, "losetup")
	dir := t.TempDir()
	img := filepath.Join(dir, "fs.img")
	sh(t, "truncate", "-s", "64M", img)
	sh(t, "mkfs.ext4", "-q", "-F", img)
	loop := strings.TrimSpace(sh(t, "losetup", "-f", "--show", img))
	t.Cleanup(func() {
		if out, err := exec.Command("losetup", "-d", loop).CombinedOutput(); err != nil {
			t.Errorf("losetup -d %s: %v %s", loop, err, out)
		}
	})
	mnt := filepath.Join(dir, "mnt")
	os.Mkdir(mnt, 0o755)
	sh(t, "mount", loop, mnt)
	t.Cleanup(func() {
		if err := testutil.Unmount(mnt); err != nil {
			t.Error(err)
		}
	})
	file := filepath.Join(mnt, "cow")
	sh(t, "fallocate", "-l", "8M", file)

	var out bytes.Buffer
	if err := runCLI([]string{"extents", file}, &out); err != nil {
		t.Fatal(err)
	}
	var st unix.Stat_t
	if err := unix.Stat(loop, &st); err != nil {
		t.Fatal(err)
	}
	dev := fmt.Sprintf("%d:%d", unix.Major(st.Rdev), unix.Minor(st.Rdev))
	line := regexp.MustCompile(`^(\d+) (\d+) linear (\d+:\d+) (\d+)$`)
	var next uint64
	var got [][2]uint64 // physical start, length in sectors
	for _, l := range strings.Split(strings.TrimSpace(out.String()), "\n") {
		m := line.FindStringSubmatch(l)
		if m == nil {
			t.Fatalf("line %q is not in dmsetup's linear format", l)
		}
		start, _ := strconv.ParseUint(m[1], 10, 64)
		length, _ := strconv.ParseUint(m[2], 10, 64)
		off, _ := strconv.ParseUint(m[4], 10, 64)
		if start != next || m[3] != dev {
			t.Fatalf("line %q: want start %d on %s", l, next, dev)
		}
		next += length
		got = append(got, [2]uint64{off, length})
	}
	if next != 8<<20/512 {
		t.Fatalf("table maps %d sectors, want %d", next, 8<<20/512)
	}

	// filefrag -v -b512 lists "ext: logical.. : physical..: length:" in
	// 512-byte units; merge its physically contiguous rows as the table does.
	var want [][2]uint64
	row := regexp.MustCompile(`^\s*\d+:\s*\d+\.\.\s*\d+:\s*(\d+)\.\.\s*\d+:\s*(\d+):`)
	for _, l := range strings.Split(sh(t, "filefrag", "-v", "-b512", file), "\n") {
		m := row.FindStringSubmatch(l)
		if m == nil {
			continue
		}
		p, _ := strconv.ParseUint(m[1], 10, 64)
		n, _ := strconv.ParseUint(m[2], 10, 64)
		if k := len(want) - 1; k >= 0 && want[k][0]+want[k][1] == p {
			want[k][1] += n
			continue
		}
		want = append(want, [2]uint64{p, n})
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("cpinit extents %v, filefrag %v", got, want)
	}

	out.Reset()
	if err := runCLI([]string{"extents", "--json", file}, &out); err != nil {
		t.Fatal(err)
	}
	var j struct {
		Size        uint64 `json:"size"`
		Fingerprint string `json:"fingerprint"`
		Extents     []struct {
			Flags any `json:"flags"`
		} `json:"extents"`
	}
	if err := json.Unmarshal(out.Bytes(), &j); err != nil {
		t.Fatalf("--json output does not parse: %v\n%s", err, out.String())
	}
	if j.Size != 8<<20 || len(j.Fingerprint) != 64 || len(j.Extents) == 0 {
		t.Fatalf("--json: %s", out.String())
	}
}

func TestExtentsCLIRejectsTmpfs(t *testing.T) {
	testutil.RequireRoot(t)
	dir := t.TempDir()
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, "size=16m"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := testutil.Unmount(dir); err != nil {
			t.Error(err)
		}
	})
	f := filepath.Join(dir, "cow")
	if err := os.WriteFile(f, make([]byte, 4096), 0o600); err != nil {
		t.Fatal(err)
	}
	err := runCLI([]string{"extents", f}, &bytes.Buffer{})
	if err == nil || !strings.Contains(err.Error(), f) {
		t.Fatalf("err = %v, want a refusal naming %s", err, f)
	}
	t.Logf("refusal: %v", err)
}
