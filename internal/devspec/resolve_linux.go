package devspec

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/u-root/u-root/pkg/mount/block"
	"golang.org/x/sys/unix"
)

// ErrNotFound means no block device matches the spec (yet).
var ErrNotFound = errors.New("no such block device")

// Resolve returns the /dev path of the one block device the spec names.
//
// Filesystem identities (UUID=, LABEL=) skip device-mapper devices: a dm
// device stacked on userdata (snapshot-origin) shows the same superblock as
// the partition beneath it, and the partition is what we want. More than one
// match is an error, never a guess: picking the wrong disk is how data gets
// lost.
func Resolve(s Spec) (string, error) {
	switch s.Kind {
	case Path:
		var st unix.Stat_t
		if err := unix.Stat(s.Value, &st); err != nil {
			if errors.Is(err, unix.ENOENT) {
				return "", fmt.Errorf("userdata device %s: %w", s.Value, ErrNotFound)
			}
			return "", &os.PathError{Op: "stat", Path: s.Value, Err: err}
		}
		if st.Mode&unix.S_IFMT != unix.S_IFBLK {
			return "", fmt.Errorf("%s is not a block device (mode %#o)", s.Value, st.Mode)
		}
		return s.Value, nil
	case UUID, Label:
		return resolveFS(s)
	case PartUUID, PartLabel:
		devs, err := block.GetBlockDevices()
		if err != nil {
			return "", fmt.Errorf("list block devices for %s: %w", s, err)
		}
		var m block.BlockDevices
		if s.Kind == PartUUID {
			m = devs.FilterPartID(s.Value)
		} else {
			m = devs.FilterPartLabel(s.Value)
		}
		var names []string
		for _, d := range m {
			names = append(names, d.DevicePath())
		}
		if s.Kind == PartUUID {
			if sig, part, ok := ParseMBRPartUUID(s.Value); ok {
				mbr, err := mbrPartitions(sig, part)
				if err != nil {
					return "", fmt.Errorf("%s: %w", s, err)
				}
				names = append(names, mbr...)
			}
		}
		return one(s, names)
	}
	return "", fmt.Errorf("device specification %s: unknown kind %q", s, s.Kind)
}

func one(s Spec, paths []string) (string, error) {
	sort.Strings(paths)
	switch len(paths) {
	case 0:
		return "", fmt.Errorf("%s: %w", s, ErrNotFound)
	case 1:
		return paths[0], nil
	}
	return "", fmt.Errorf("%s matches more than one block device (%s): name the device by path instead", s, strings.Join(paths, ", "))
}

func resolveFS(s Spec) (string, error) {
	names, err := os.ReadDir("/sys/class/block")
	if err != nil {
		return "", fmt.Errorf("list block devices for %s: %w", s, err)
	}
	var match []string
	for _, n := range names {
		if strings.HasPrefix(n.Name(), "dm-") {
			continue
		}
		dev := filepath.Join("/dev", n.Name())
		sb, err := ReadSuperblock(dev)
		if err != nil {
			continue // empty, unreadable or foreign: not ours to name
		}
		if (s.Kind == UUID && sb.UUID == s.Value) || (s.Kind == Label && sb.Label == s.Value) {
			match = append(match, dev)
		}
	}
	return one(s, match)
}

// ReadSuperblock reads the filesystem identity of the device or image at path.
func ReadSuperblock(path string) (Superblock, error) {
	f, err := os.Open(path)
	if err != nil {
		return Superblock{}, err
	}
	defer f.Close()
	b := make([]byte, SuperblockProbeSize)
	if _, err := io.ReadFull(f, b); err != nil {
		return Superblock{}, &os.PathError{Op: "read superblock", Path: path, Err: err}
	}
	sb, err := ParseSuperblock(b)
	if err != nil {
		return Superblock{}, &os.PathError{Op: "read superblock", Path: path, Err: err}
	}
	return sb, nil
}

// WaitResolve retries Resolve until the device shows up or ctx ends: block
// devices appear asynchronously after their driver module loads. Errors
// other than ErrNotFound (ambiguity, not a block device) return at once.
func WaitResolve(ctx context.Context, s Spec, poll time.Duration) (string, error) {
	for {
		p, err := Resolve(s)
		if err == nil || !errors.Is(err, ErrNotFound) {
			return p, err
		}
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("%w (waited: %v)", err, context.Cause(ctx))
		case <-time.After(poll):
		}
	}
}

// mbrPartitions returns the partition numbered part of every whole disk
// whose DOS partition table has the disk signature sig (see mbr.go). The
// partition is found by the number the kernel gives it
// (/sys/class/block/DISK/PART/partition), so logical partitions count as
// the kernel counts them, and a name's "p" (loop0p1, mmcblk0p1, vda1) needs
// no guessing.
func mbrPartitions(sig uint32, part int) ([]string, error) {
	disks, err := os.ReadDir("/sys/class/block")
	if err != nil {
		return nil, err
	}
	var found []string
	for _, d := range disks {
		name := d.Name()
		if strings.HasPrefix(name, "dm-") {
			continue
		}
		if _, err := os.Stat(filepath.Join("/sys/class/block", name, "partition")); err == nil {
			continue // a partition: only whole disks carry a table
		}
		sector, err := readSector(filepath.Join("/dev", name))
		if err != nil {
			continue // empty (loop without backing file), gone or unreadable
		}
		if got, ok := MBRDiskSignature(sector); !ok || got != sig {
			continue
		}
		children, err := os.ReadDir(filepath.Join("/sys/class/block", name))
		if err != nil {
			continue
		}
		for _, c := range children {
			b, err := os.ReadFile(filepath.Join("/sys/class/block", name, c.Name(), "partition"))
			if err != nil {
				continue
			}
			if strings.TrimSpace(string(b)) == fmt.Sprint(part) {
				found = append(found, filepath.Join("/dev", c.Name()))
			}
		}
	}
	return found, nil
}

func readSector(dev string) ([]byte, error) {
	f, err := os.Open(dev)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b := make([]byte, mbrSectorSize)
	if _, err := io.ReadFull(f, b); err != nil {
		return nil, &os.PathError{Op: "read", Path: dev, Err: err}
	}
	return b, nil
}
