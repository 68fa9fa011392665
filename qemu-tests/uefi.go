package qemutests

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"sort"
	"strings"
)

// OVMF from Debian's ovmf package: the UEFI firmware the bootloader tests
// boot GRUB and systemd-boot with. OVMFCode is read-only flash; each
// machine gets its own copy of the variable store template (NewOVMFVars),
// where the firmware keeps its boot entries and systemd-boot its EFI
// variables.
const (
	OVMFCode     = "/usr/share/OVMF/OVMF_CODE_4M.fd"
	ovmfVarsTmpl = "/usr/share/OVMF/OVMF_VARS_4M.fd"
)

// NewOVMFVars copies the variable store template into dir.
func NewOVMFVars(dir string) (string, error) {
	b, err := os.ReadFile(ovmfVarsTmpl)
	if err != nil {
		return "", fmt.Errorf("OVMF variable store (Debian package ovmf): %w", err)
	}
	p := filepath.Join(dir, "OVMF_VARS.fd")
	return p, os.WriteFile(p, b, 0o644)
}

// MakeFAT makes a FAT image of size bytes at img holding files (path in the
// image → host file), with mkfs.vfat (dosfstools) and mtools: no mount,
// which the host kernel could not do (it has no vfat). The image is a whole
// disk without a partition table: OVMF and GRUB find the ESP on it, and
// Linux mounts it as /dev/vdX.
func MakeFAT(img string, size int64, files map[string]string) error {
	os.Remove(img)
	if out, err := exec.Command("mkfs.vfat", "-C", img, fmt.Sprint(size/1024)).CombinedOutput(); err != nil {
		return fmt.Errorf("mkfs.vfat %s: %v\n%s", img, err, out)
	}
	names := make([]string, 0, len(files))
	for n := range files {
		names = append(names, n)
	}
	sort.Strings(names) // directories before their contents, same image every time
	made := map[string]bool{"/": true}
	for _, n := range names {
		var dirs []string
		for d := path.Dir(n); !made[d]; d = path.Dir(d) {
			dirs = append([]string{d}, dirs...)
			made[d] = true
		}
		for _, d := range dirs {
			if out, err := exec.Command("mmd", "-i", img, "::"+d).CombinedOutput(); err != nil {
				return fmt.Errorf("mmd %s in %s: %v\n%s", d, img, err, out)
			}
		}
		if out, err := exec.Command("mcopy", "-i", img, files[n], "::"+n).CombinedOutput(); err != nil {
			return fmt.Errorf("mcopy %s to %s:%s: %v\n%s", files[n], img, n, err, out)
		}
	}
	return nil
}

// FATRead returns the contents of p in the FAT image img.
func FATRead(img, p string) ([]byte, error) {
	tmp, err := os.CreateTemp("", "fatread-*")
	if err != nil {
		return nil, err
	}
	tmp.Close()
	defer os.Remove(tmp.Name())
	if out, err := exec.Command("mcopy", "-o", "-n", "-i", img, "::"+p, tmp.Name()).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("mcopy %s:%s: %v\n%s", img, p, err, out)
	}
	return os.ReadFile(tmp.Name())
}

// FATWrite replaces (or creates) p in the FAT image img with data.
func FATWrite(img, p string, data []byte) error {
	tmp, err := os.CreateTemp("", "fatwrite-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	tmp.Close()
	if out, err := exec.Command("mcopy", "-o", "-n", "-i", img, tmp.Name(), "::"+p).CombinedOutput(); err != nil {
		return fmt.Errorf("mcopy to %s:%s: %v\n%s", img, p, err, out)
	}
	return nil
}

// FATList returns the names in directory dir of the FAT image img, sorted.
func FATList(img, dir string) ([]string, error) {
	out, err := exec.Command("mdir", "-b", "-i", img, "::"+dir).CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("mdir %s:%s: %v\n%s", img, dir, err, out)
	}
	var names []string
	for _, l := range strings.Split(string(bytes.TrimSpace(out)), "\n") {
		if l = strings.TrimSpace(l); l != "" {
			names = append(names, path.Base(strings.TrimSuffix(l, "/")))
		}
	}
	sort.Strings(names)
	return names, nil
}
