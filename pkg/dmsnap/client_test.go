package dmsnap

import (
	"errors"
	"reflect"
	"strings"
	"syscall"
	"testing"
	"time"
)

// fakeIoctl makes a Client whose ioctls go to fn.
func fakeIoctl(fn func(c cmd, buf []byte) error) *Client {
	s := realSys
	s.ioctl = func(_ int, c cmd, buf []byte) error { return fn(c, buf) }
	return &Client{fd: 3, sys: &s, RemoveTries: 3, RemoveDelay: time.Millisecond}
}

func TestClientGrowsBufferForLargeTables(t *testing.T) {
	specs := linearSpecs(150_000)
	var sizes []int
	c := fakeIoctl(func(c cmd, buf []byte) error {
		if c != cmdTableStatus {
			t.Fatalf("unexpected %v", c)
		}
		h, err := parseHeader(buf)
		if err != nil || h.Name != "cp-cow" || h.Flags&flagStatusTable == 0 || int(h.DataSize) != len(buf) {
			t.Fatalf("request header %+v %v", h, err)
		}
		sizes = append(sizes, len(buf))
		copy(buf, kernelStatusAnswer(ioctlHeader{Name: h.Name}, specs, len(buf)))
		return nil
	})
	got, err := c.Table("cp-cow")
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, specs) {
		t.Fatalf("got %d targets", len(got))
	}
	for i := 1; i < len(sizes); i++ {
		if sizes[i] != 2*sizes[i-1] {
			t.Errorf("buffer sizes %v: want doubling", sizes)
		}
	}
	if len(sizes) < 5 {
		t.Errorf("buffer sizes %v: expected several rounds", sizes)
	}
}

func TestClientErrors(t *testing.T) {
	calls := 0
	c := fakeIoctl(func(c cmd, buf []byte) error {
		calls++
		h, _ := parseHeader(buf)
		switch h.Name {
		case "busy":
			return syscall.EBUSY
		case "gone":
			return syscall.ENXIO
		}
		return syscall.EINVAL
	})
	err := c.Remove("busy")
	if !errors.Is(err, syscall.EBUSY) || calls != 3 {
		t.Errorf("remove busy: %v after %d calls", err, calls)
	}
	if want := `dm remove "busy": ioctl DM_DEV_REMOVE: device or resource busy (still busy after 3 tries)`; err.Error() != want {
		t.Errorf("error text %q, want %q", err, want)
	}
	_, err = c.Info("gone")
	if !IsNoDevice(err) || err.Error() != `dm info "gone": ioctl DM_DEV_STATUS: no such device or address` {
		t.Errorf("info: %v", err)
	}
	tb, _ := Linear([]Segment{{Dev{8, 0}, 0, 8}})
	_, err = c.Load("bad", tb)
	if !errors.Is(err, syscall.EINVAL) || !strings.HasPrefix(err.Error(), `dm load "bad": ioctl DM_TABLE_LOAD: invalid argument`) {
		t.Errorf("load: %v", err)
	}
	if _, err := c.Create("a/b", ""); err == nil || !strings.Contains(err.Error(), `contains '/'`) {
		t.Errorf("create a/b: %v", err)
	}
}

// CreateAndLoad removes the half-made device when the load fails.
func TestCreateAndLoadCleansUp(t *testing.T) {
	var log []cmd
	c := fakeIoctl(func(c cmd, buf []byte) error {
		log = append(log, c)
		switch c {
		case cmdDevCreate:
			h, _ := parseHeader(buf)
			h.Dev = encodeDev(Dev{254, 9})
			putHeader(buf, &h)
			return nil
		case cmdTableLoad:
			return syscall.EINVAL
		case cmdDevRemove:
			return nil
		}
		return syscall.ENOTTY
	})
	c.sys.makeNode = func(string, Dev) error { return nil }
	c.NodeDir = t.TempDir()
	tb, _ := Linear([]Segment{{Dev{8, 0}, 0, 8}})
	if _, err := c.CreateAndLoad("x", "", tb); !errors.Is(err, syscall.EINVAL) {
		t.Errorf("err %v", err)
	}
	if want := []cmd{cmdDevCreate, cmdTableLoad, cmdDevRemove}; !reflect.DeepEqual(log, want) {
		t.Errorf("calls %v, want %v", log, want)
	}
}
