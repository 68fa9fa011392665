package main

import (
	"bytes"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/cpinit/cpinit/internal/testutil"
	"github.com/cpinit/cpinit/pkg/dmsnap"
	"golang.org/x/sys/unix"
)

// openPTY opens a pseudo-terminal pair: a real terminal for isTerminal.
func openPTY(t *testing.T) (master, slave *os.File) {
	t.Helper()
	m, err := os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		if testutil.InCI() {
			t.Fatalf("no /dev/ptmx under CI: %v", err)
		}
		t.Skipf("no /dev/ptmx: %v", err)
	}
	t.Cleanup(func() { m.Close() })
	if err := unix.IoctlSetPointerInt(int(m.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		t.Fatal(err)
	}
	n, err := unix.IoctlGetInt(int(m.Fd()), unix.TIOCGPTN)
	if err != nil {
		t.Fatal(err)
	}
	s, err := os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return m, s
}

func readPTY(t *testing.T, m *os.File) string {
	t.Helper()
	m.SetReadDeadline(time.Now().Add(2 * time.Second))
	var out bytes.Buffer
	buf := make([]byte, 4096)
	for {
		n, err := m.Read(buf)
		out.Write(buf[:n])
		if err != nil || bytes.Contains(out.Bytes(), []byte("END")) {
			return out.String()
		}
	}
}

// TestProgressQuietUnlessTerminal: to a pipe or file, long operations print
// only their result line; to a terminal, a progress bar and step lines.
func TestProgressQuietUnlessTerminal(t *testing.T) {
	feed := func(f func(dmsnap.Progress)) {
		f(dmsnap.Progress{BytesTotal: 8 << 20, BytesLeft: 6 << 20, Rate: 1 << 20, ETA: 6 * time.Second})
		f(dmsnap.Progress{BytesTotal: 8 << 20, BytesLeft: 0, Done: true, Elapsed: 2 * time.Second, Rate: 4 << 20})
	}

	var buf bytes.Buffer
	feed(progressBar(&buf)(mergeKernel))
	step(&buf, "allocating")()
	feed(progressBar(&buf)(mergeRestore))
	if got, want := buf.String(), "merge: 8.0 MiB copied back in 2s, 4.0 MiB/s\nrestore: 8.0 MiB copied back in 2s, 4.0 MiB/s\n"; got != want {
		t.Errorf("not a terminal: printed %q, want only the result lines %q", got, want)
	}

	// A regular file is not a terminal either.
	f, err := os.Create(t.TempDir() + "/log")
	if err != nil {
		t.Fatal(err)
	}
	step(f, "allocating")()
	if fi, _ := f.Stat(); fi.Size() != 0 {
		t.Errorf("step wrote %d bytes to a file", fi.Size())
	}

	m, s := openPTY(t)
	feed(progressBar(s)(mergeKernel))
	feed(progressBar(s)(mergeRestore))
	step(s, "allocating and pinning a %d MiB COW file", 64)()
	fmt.Fprintln(s, "END")
	out := readPTY(t, m)
	for _, want := range []string{"\rmerge [##########", "\rrestore [##########", " 25.0%", "6.0 MiB left", "1.0 MiB/s", "6s left", "100.0%", "allocating and pinning a 64 MiB COW file... done in "} {
		if !strings.Contains(out, want) {
			t.Errorf("terminal output %q lacks %q", out, want)
		}
	}
}
