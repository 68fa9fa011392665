package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/cpinit/cpinit/internal/devspec"
	"github.com/cpinit/cpinit/pkg/bootstate"
)

// fwEnvConfig is where libubootenv's tools (fw_printenv, fw_setenv) read
// the U-Boot environment's location; cpinit.ubootenv= overrides it.
var fwEnvConfig = "/etc/fw_env.config"

// newBootloader returns the Bootloader that cpinit.bootloader= (or
// cpinit.misc=) names, nil for cpinit's own counter. resolve turns a device
// spec into a path: devspec.Resolve for the commands, a waiting resolve in
// PID 1. booted is the slot this kernel was booted from ("" if unknown);
// inPID1 leaves out the lock libubootenv's tools share (nothing else runs
// in the initramfs).
func newBootloader(p Params, booted string, resolve func(devspec.Spec) (string, error), inPID1 bool) (bootstate.Bootloader, error) {
	scheme := p.scheme()
	var names []bootstate.UBootSlotName
	if p.SlotNames != "" {
		var err error
		if names, err = bootstate.ParseUBootSlotNames(p.SlotNames); err != nil {
			return nil, err
		}
	}
	switch scheme {
	case schemeNone:
		return nil, nil
	case schemeAndroidMisc:
		path, err := resolve(*p.Misc)
		if err != nil {
			return nil, fmt.Errorf("misc partition %s: %w", p.Misc, err)
		}
		return &bootstate.AndroidMisc{Path: path, Current: bootstate.SlotIndex(booted)}, nil
	case schemeUBootRAUC, schemeUBootMender, schemeUBootCount:
		loc, err := ubootLocation(p.UBootEnv)
		if err != nil {
			return nil, err
		}
		for i, a := range loc.Areas {
			if fi, err := os.Stat(a.Device); err == nil && fi.Mode().IsRegular() {
				continue // an environment in a file, as libubootenv allows
			}
			// Wait for the device (PID 1) and take the kernel's name for
			// it; the area's offsets stay as configured.
			if loc.Areas[i].Device, err = resolve(devspec.Spec{Kind: devspec.Path, Value: a.Device}); err != nil {
				return nil, fmt.Errorf("U-Boot environment device %s: %w", a.Device, err)
			}
		}
		b := &bootstate.UBootBootloader{Location: loc, Scheme: bootstate.UBootSchemeConfig{Scheme: scheme, Slots: names}}
		if !inPID1 {
			b.LockPath = "/var/lock/fw_printenv.lock"
		}
		return b, nil
	case schemeGrubRAUC:
		var slots []bootstate.GrubRaucSlot
		for _, n := range names {
			slots = append(slots, bootstate.GrubRaucSlot{Name: strings.TrimPrefix(n.Slot, "_"), Bootname: n.Value})
		}
		dev, err := resolve(*p.BootPart)
		if err != nil {
			return nil, fmt.Errorf("boot partition %s: %w", p.BootPart, err)
		}
		return &onBootPart{dev: dev, fstype: p.BootPartFS, inner: func(dir string) bootstate.Bootloader {
			return &bootstate.GrubEnvFile{Path: dir + p.GrubEnv, Slots: slots}
		}}, nil
	case schemeSystemdBoot:
		if p.SlotNames != "" {
			return nil, fmt.Errorf("cpinit.slotnames= does not apply to systemd-boot: its slot entries are named <stem>-<rank>-<a|b>.conf (docs/bootloader-systemd-boot.md)")
		}
		dev, err := resolve(*p.BootPart)
		if err != nil {
			return nil, fmt.Errorf("ESP %s: %w", p.BootPart, err)
		}
		vars, err := efiVars()
		if err != nil {
			return nil, err
		}
		return &onBootPart{dev: dev, fstype: p.BootPartFS, inner: func(dir string) bootstate.Bootloader {
			return &bootstate.BLSDir{ESP: dir, EFIVars: vars}
		}}, nil
	}
	return nil, fmt.Errorf("cpinit.bootloader=%s: not supported by this cpinit", scheme)
}

// efiVarsDir is where efivarfs is mounted.
var efiVarsDir = "/sys/firmware/efi/efivars"

// efiVars returns efivarfs's mount point when the system booted through
// UEFI, mounting it (PID 1 starts without it), "" otherwise: systemd-boot's
// LoaderEntryDefault and LoaderEntryOneShot change which entry it boots,
// and cpinit must see them (docs/bootloader-systemd-boot.md).
func efiVars() (string, error) {
	if _, err := os.Stat(filepath.Dir(efiVarsDir)); err != nil {
		return "", nil // not booted through UEFI
	}
	var st unix.Statfs_t
	if err := unix.Statfs(efiVarsDir, &st); err == nil && uint32(st.Type) == unix.EFIVARFS_MAGIC {
		return efiVarsDir, nil
	}
	if err := unix.Mount("efivarfs", efiVarsDir, "efivarfs", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC|unix.MS_RDONLY, ""); err != nil {
		return "", &os.PathError{Op: "mount efivarfs", Path: efiVarsDir, Err: fmt.Errorf("systemd-boot's EFI variables (LoaderEntryDefault, LoaderEntryOneShot) decide which entry boots: %w", err)}
	}
	return efiVarsDir, nil
}

// ubootLocation is cpinit.ubootenv= if given, else /etc/fw_env.config.
func ubootLocation(param string) (bootstate.UBootEnvLocation, error) {
	if param != "" {
		return bootstate.ParseUBootEnvLocation(param)
	}
	f, err := os.Open(fwEnvConfig)
	if err != nil {
		return bootstate.UBootEnvLocation{}, fmt.Errorf("U-Boot environment: no cpinit.ubootenv= and %w (give the environment's device, offset and size)", err)
	}
	defer f.Close()
	loc, err := bootstate.ParseFWEnvConfig(f)
	if err != nil {
		return loc, fmt.Errorf("%s: %w", fwEnvConfig, err)
	}
	return loc, nil
}

// onBootPart is a Bootloader whose state is in files on a partition
// (grubenv on the ESP or /boot, systemd-boot's entries): it mounts the
// partition for each Load and Save at one private mount point, so the
// paths a loaded state holds stay valid for its Save, and unmounts after.
// A partition the running system has mounted elsewhere (/boot/efi) is
// mounted a second time: the kernel shares the superblock, so both see
// the same files.
type onBootPart struct {
	dev, fstype string
	inner       func(dir string) bootstate.Bootloader

	once sync.Once
	dir  string
	err  error
}

// Describe implements bootstate.Bootloader.
func (o *onBootPart) Describe() string {
	return fmt.Sprintf("%s on %s", o.inner("").Describe(), o.dev)
}

func (o *onBootPart) mount() (dir string, unmount func() error, err error) {
	o.once.Do(func() {
		// Under /run/cpinit, which cpinit's units may write (their
		// ProtectSystem=strict leaves the rest of /run read-only).
		base := "/run/cpinit"
		if _, err := os.Stat("/run"); err != nil {
			base = os.TempDir()
		} else if err := os.MkdirAll(base, 0o755); err != nil {
			o.err = err
			return
		}
		o.dir, o.err = os.MkdirTemp(base, "bootpart-")
	})
	if o.err != nil {
		return "", nil, fmt.Errorf("mount point for boot partition %s: %w", o.dev, o.err)
	}
	if err := unix.Mount(o.dev, o.dir, o.fstype, unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
		return "", nil, &os.PathError{Op: "mount", Path: o.dir, Err: fmt.Errorf("boot partition %s (%s; cpinit.bootpartfs=): %w", o.dev, o.fstype, err)}
	}
	return o.dir, func() error {
		if err := unix.Unmount(o.dir, 0); err != nil {
			return &os.PathError{Op: "umount", Path: o.dir, Err: fmt.Errorf("boot partition %s: %w", o.dev, err)}
		}
		return nil
	}, nil
}

// Load implements bootstate.Bootloader.
func (o *onBootPart) Load() (bootstate.ABState, error) {
	dir, unmount, err := o.mount()
	if err != nil {
		return nil, err
	}
	s, err := o.inner(dir).Load()
	return s, errors.Join(err, unmount())
}

// Save implements bootstate.Bootloader. The inner Save flushed its files;
// the unmount writes the filesystem's own metadata back.
func (o *onBootPart) Save(s bootstate.ABState) error {
	dir, unmount, err := o.mount()
	if err != nil {
		return err
	}
	err = o.inner(dir).Save(s)
	return errors.Join(err, unmount())
}

// bootDesc names the bootloader's state for messages: "misc /dev/vde" for
// Android (the form the console has always shown), else the backend's
// description.
func bootDesc(bl bootstate.Bootloader) string {
	if m, ok := bl.(*bootstate.AndroidMisc); ok {
		return "misc " + m.Path
	}
	return bl.Describe()
}

// counterOf is the record's counter mode for a bootloader.
func counterOf(bl bootstate.Bootloader) bootstate.CounterMode {
	switch bl.(type) {
	case nil:
		return bootstate.CounterNative
	case *bootstate.AndroidMisc:
		return bootstate.CounterAndroid
	}
	return bootstate.CounterBootloader
}
