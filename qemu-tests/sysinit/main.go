// Command sysinit is the "system" of the test slots: the init cpinit
// switch_roots to in the QEMU tests, standing in for the real init (systemd,
// Android init) of an A/B system slot. It reports on the console in
// machine-readable "sysinit: " lines.
//
// Kernel parameters (it reads /proc/cmdline, which switch_root moved into
// its root):
//
//	sysinit.action=report (default)  print every /data/*.txt, power off;
//	                                 with sysinit.manifest=1 also
//	                                 "sysinit: datafs=ext4|f2fs" and
//	                                 "sysinit: manifest=DIGEST files=N" of
//	                                 /data and "sysinit: cow=present" or
//	                                 "sysinit: cow=absent" (whether
//	                                 /data/.cpinit/cow exists)
//	sysinit.action=write             write sysinit.token= to /data/cut.txt,
//	                                 fsync it and the directory, print
//	                                 "sysinit: wrote cut.txt", then wait
//	                                 forever (the host cuts the power);
//	                                 with sysinit.rawdev=DEV first write
//	                                 "synced sysinit.rawtoken=" at 4096
//	                                 of DEV and fdatasync it, then
//	                                 "unsynced TOKEN" at 0 and no flush
//	                                 (O_DIRECT: both reach the disk),
//	                                 and print "sysinit: wrote DEV
//	                                 synced=4096 unsynced=0"
//	sysinit.action=ota               the OTA agent of the old slot: run
//	                                 `cpinit begin --size sysinit.cowsize=`
//	                                 (and sysinit.beginargs=, comma-separated),
//	                                 print "sysinit: ota begin ok", power off;
//	                                 with sysinit.manifest=1 it first prints
//	                                 "sysinit: datafs=…" and
//	                                 "sysinit: manifest=DIGEST files=N" of
//	                                 /data (the data before the update)
//	sysinit.action=workload          the new system: create, overwrite and
//	                                 delete files in /data (seeded by
//	                                 sysinit.seed=, sized by sysinit.mib=),
//	                                 sync, print "sysinit: workload done",
//	                                 then by sysinit.then=:
//	                                   commit  run `cpinit commit`
//	                                   crash   panic the kernel (sysrq c)
//	                                   rollback  run `cpinit rollback` (the
//	                                           update's health check failed),
//	                                           print "sysinit: rollback ok"
//	                                   hang    wait (the host cuts the power)
//	                                 With sysinit.watch=POLICY it first
//	                                 starts `cpinit watch --policy POLICY`
//	                                 in the background (sysinit.watchargs=,
//	                                 comma-separated, adds flags; its lines
//	                                 go to the console); with
//	                                 sysinit.pace=N it writes at most N
//	                                 MiB/s, fdatasync'ing each MiB (a
//	                                 system that keeps writing, so the
//	                                 COW fills while watch looks); with
//	                                 sysinit.manifest=1 it prints
//	                                 "sysinit: datafs=…" and
//	                                 "sysinit: manifest=DIGEST" of /data
//	                                 (internal/manifest) at the end; with
//	                                 sysinit.statusmid=1 it runs `cpinit
//	                                 status` a quarter of the way in, then
//	                                 `cpinit status --json`, printed on
//	                                 one line "sysinit: status-json=…".
//	                                 With sysinit.unpin=1 it first does
//	                                 what a rogue update could: clears the
//	                                 COW file's immutable flag, deletes it
//	                                 and flushes the journal (FIFREEZE),
//	                                 printing "sysinit: deleted the COW file"
//	sysinit.action=cmd               run `cpinit <sysinit.args>` (comma-
//	                                 separated; "+" separates several
//	                                 commands, run in order) and power off;
//	                                 with sysinit.probe=1, before and after
//	                                 the commands print "sysinit: raw
//	                                 before|after /dev/vdc ro=N write=ERR"
//	                                 (userdata's read-only flag, and a
//	                                 block written back unchanged)
//	sysinit.action=bootbench         the boot benchmark's next init (see
//	                                 bootbench.go): mark its start in the
//	                                 kernel log, print the boot's kernel log
//	                                 from the initramfs unpacking on as
//	                                 "BOOTBENCH kmsg" lines and one
//	                                 "BOOTBENCH run_init_us=…" line, unmount
//	                                 /data and power off (no `cpinit status`)
//
// Every other action that returns ends with `cpinit status` (when
// /usr/bin/cpinit exists, so the console shows the state the system saw)
// and a power off.
package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/cpinit/cpinit/internal/manifest"
	"golang.org/x/sys/unix"
)

func main() {
	act := run
	if params()["action"] == "bootbench" {
		// First, before anything else costs time: the benchmark measures
		// up to here. It powers off itself and returns only on failure.
		act = bootbench
	}
	if err := act(); err != nil {
		fmt.Printf("sysinit: error: %v\n", err)
	}
	status()
	// PID 1 must not exit: power off, then wait for the kernel to do it.
	unix.Sync()
	_ = unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
	for {
		time.Sleep(time.Hour)
	}
}

func params() map[string]string {
	p := map[string]string{}
	b, _ := os.ReadFile("/proc/cmdline")
	for _, w := range strings.Fields(string(b)) {
		if k, v, ok := strings.Cut(w, "="); ok && strings.HasPrefix(k, "sysinit.") {
			p[strings.TrimPrefix(k, "sysinit.")] = v
		}
	}
	return p
}

func run() error {
	fmt.Printf("sysinit: pid=%d\n", os.Getpid())
	p := params()
	switch p["action"] {
	case "", "report":
		if err := report(); err != nil {
			return err
		}
		if p["manifest"] == "1" {
			printManifest()
			cow := "absent"
			if _, err := os.Lstat("/data/.cpinit/cow"); err == nil {
				cow = "present"
			} else if !os.IsNotExist(err) {
				return err
			}
			fmt.Printf("sysinit: cow=%s\n", cow)
		}
		return nil
	case "ota":
		if p["manifest"] == "1" {
			printManifest()
		}
		args := []string{"begin"}
		if v := p["cowsize"]; v != "" {
			args = append(args, "--size", v)
		}
		if v := p["beginargs"]; v != "" {
			args = append(args, strings.Split(v, ",")...)
		}
		if err := cpinit(args...); err != nil {
			return fmt.Errorf("ota begin: %w", err)
		}
		fmt.Println("sysinit: ota begin ok")
		return nil
	case "workload":
		if p["unpin"] == "1" {
			if err := unpinCOW(); err != nil {
				return fmt.Errorf("unpin: %w", err)
			}
			fmt.Println("sysinit: deleted the COW file")
		}
		if pol := p["watch"]; pol != "" {
			args := []string{"watch", "--policy", pol}
			if w := p["watchargs"]; w != "" {
				args = append(args, strings.Split(w, ",")...)
			}
			cmd := exec.Command(cpinitBin, args...)
			cmd.Stdout, cmd.Stderr = os.Stdout, os.Stdout
			if err := cmd.Start(); err != nil {
				return fmt.Errorf("cpinit watch: %w", err)
			}
			fmt.Println("sysinit: watch started")
			done := make(chan error, 1)
			go func() { done <- cmd.Wait() }()
			defer func() {
				// A commit ends the trial and with it the watch; one that
				// has not acted by now is stopped (and says so).
				select {
				case err := <-done:
					fmt.Printf("sysinit: watch exit=%v\n", err)
				case <-time.After(15 * time.Second):
					cmd.Process.Signal(unix.SIGTERM)
					fmt.Printf("sysinit: watch still running after the workload, stopped: %v\n", <-done)
				}
			}()
		}
		pace, _ := strconv.ParseFloat(p["pace"], 64)
		var midway func()
		if p["statusmid"] == "1" {
			midway = func() {
				cpinit("status")
				statusJSON()
			}
		}
		if err := workload(p["seed"], p["mib"], pace, midway); err != nil {
			return fmt.Errorf("workload: %w", err)
		}
		fmt.Println("sysinit: workload done")
		if p["manifest"] == "1" {
			defer printManifest()
		}
		switch p["then"] {
		case "commit":
			if err := cpinit("commit"); err != nil {
				return fmt.Errorf("commit: %w", err)
			}
			fmt.Println("sysinit: commit ok")
		case "rollback":
			if err := cpinit("rollback"); err != nil {
				return fmt.Errorf("rollback: %w", err)
			}
			fmt.Println("sysinit: rollback ok")
		case "crash":
			fmt.Println("sysinit: crashing")
			// A real crash: whatever the system had not flushed is lost.
			return os.WriteFile("/proc/sysrq-trigger", []byte("c"), 0)
		case "hang":
			for {
				time.Sleep(time.Hour)
			}
		}
		return nil
	case "cmd":
		if p["probe"] == "1" {
			probeRaw("before")
		}
		for _, c := range strings.Split(p["args"], "+") {
			err := cpinit(strings.Split(c, ",")...)
			fmt.Printf("sysinit: cmd exit=%v\n", err)
		}
		if p["probe"] == "1" {
			probeRaw("after")
		}
		return nil
	case "write":
		if err := writeSynced("/data/cut.txt", p["token"]+"\n"); err != nil {
			return err
		}
		fmt.Println("sysinit: wrote cut.txt")
		if dev := p["rawdev"]; dev != "" {
			if err := writeRaw(dev, p["rawtoken"]); err != nil {
				return err
			}
			fmt.Printf("sysinit: wrote %s synced=4096 unsynced=0\n", dev)
		}
		for {
			time.Sleep(time.Hour)
		}
	}
	return fmt.Errorf("unknown sysinit.action=%q", p["action"])
}

const cpinitBin = "/usr/bin/cpinit"

// probeRaw reports whether userdata's raw partition (/dev/vdc) takes writes,
// as a recovery shell would find it: its read-only flag (BLKROGET) and the
// result of writing one 4 KiB block at 1 MiB back unchanged (so a device
// that takes it loses nothing).
func probeRaw(when string) {
	const dev = "/dev/vdc"
	f, err := os.OpenFile(dev, os.O_RDWR, 0)
	if err != nil {
		fmt.Printf("sysinit: raw %s %s open=%v\n", when, dev, err)
		return
	}
	defer f.Close()
	ro, err := unix.IoctlGetInt(int(f.Fd()), unix.BLKROGET)
	if err != nil {
		fmt.Printf("sysinit: raw %s %s BLKROGET=%v\n", when, dev, err)
		return
	}
	buf := make([]byte, 4096)
	if _, err := f.ReadAt(buf, 1<<20); err != nil {
		fmt.Printf("sysinit: raw %s %s read=%v\n", when, dev, err)
		return
	}
	_, werr := f.WriteAt(buf, 1<<20)
	if werr == nil {
		werr = f.Sync()
	}
	fmt.Printf("sysinit: raw %s %s ro=%d write=%v\n", when, dev, ro, werr)
}

// printManifest prints "sysinit: datafs=ext4|f2fs|0xMAGIC" (the filesystem
// mounted on /data) and "sysinit: manifest=DIGEST files=N" of /data
// (internal/manifest: lost+found and .cpinit left out).
func printManifest() {
	var st unix.Statfs_t
	if err := unix.Statfs("/data", &st); err != nil {
		fmt.Printf("sysinit: statfs /data: %v\n", err)
	} else {
		fs := fmt.Sprintf("%#x", st.Type)
		switch uint32(st.Type) { // int32 on arm and 386: see fiemap's fsMagic
		case unix.EXT4_SUPER_MAGIC:
			fs = "ext4"
		case unix.F2FS_SUPER_MAGIC:
			fs = "f2fs"
		}
		fmt.Printf("sysinit: datafs=%s\n", fs)
	}
	m, err := manifest.Dir("/data")
	if err != nil {
		fmt.Printf("sysinit: manifest error: %v\n", err)
		return
	}
	fmt.Printf("sysinit: manifest=%s files=%d\n", m.Digest(), len(m))
}

// cpinit runs the cpinit CLI with its output on the console.
func cpinit(args ...string) error {
	cmd := exec.Command(cpinitBin, args...)
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stdout
	return cmd.Run()
}

// statusJSON prints `cpinit status --json` on one line, so that other
// writers to the console (cpinit watch) cannot split it.
func statusJSON() {
	out, err := exec.Command(cpinitBin, "status", "--json").Output()
	var b bytes.Buffer
	if err == nil {
		err = json.Compact(&b, out)
	}
	if err != nil {
		fmt.Printf("sysinit: status --json failed: %v\n", err)
		return
	}
	fmt.Printf("sysinit: status-json=%s\n", b.Bytes())
}

func status() {
	if _, err := os.Stat(cpinitBin); err == nil {
		cpinit("status")
	}
}

// workload changes userdata the way a new system might: it overwrites part
// of some files in place, deletes others and creates new ones, seeded so a
// test can rerun it. About mib MiB are written in all; with pace > 0 at most
// pace MiB/s, each MiB fdatasync'ed. midway, if set, runs once when a
// quarter of the new data is written.
func workload(seed, mib string, pace float64, midway func()) error {
	n, _ := strconv.Atoi(seed)
	size, _ := strconv.Atoi(mib)
	if size <= 0 {
		size = 8
	}
	rng := rand.New(rand.NewPCG(uint64(n), 42))
	var files []string
	err := filepath.WalkDir("/data", func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (d.Name() == "lost+found" || d.Name() == ".cpinit") {
			return filepath.SkipDir
		}
		if d.Type().IsRegular() {
			files = append(files, p)
		}
		return nil
	})
	if err != nil {
		return err
	}
	sort.Strings(files)
	buf := make([]byte, 64<<10)
	fill := func() {
		for i := range buf {
			buf[i] = byte(rng.Uint32())
		}
	}
	written := 0
	for i, f := range files {
		switch i % 3 {
		case 0: // overwrite the start in place
			fh, err := os.OpenFile(f, os.O_WRONLY, 0)
			if err != nil {
				return err
			}
			fill()
			_, err = fh.WriteAt(buf[:4096], 0)
			fh.Close()
			if err != nil {
				return err
			}
			written += 4096
		case 1:
			if err := os.Remove(f); err != nil {
				return err
			}
		}
	}
	if err := os.MkdirAll("/data/new", 0o755); err != nil {
		return err
	}
	t0, paceStart, synced := time.Now(), written, written
	for j := 0; written < size<<20; j++ {
		fh, err := os.Create(fmt.Sprintf("/data/new/file%03d", j))
		if err != nil {
			return err
		}
		for k := 0; k < 16 && written < size<<20; k++ {
			fill()
			if _, err := fh.Write(buf); err != nil {
				fh.Close()
				return err
			}
			written += len(buf)
			if midway != nil && written-paceStart >= (size<<20-paceStart)/4 {
				midway()
				midway = nil
			}
			if pace > 0 && written-synced >= 1<<20 {
				synced = written
				if err := unix.Fdatasync(int(fh.Fd())); err != nil {
					fh.Close()
					return err
				}
				if ahead := time.Duration(float64(written-paceStart)/(pace*(1<<20))*float64(time.Second)) - time.Since(t0); ahead > 0 {
					time.Sleep(ahead)
				}
			}
		}
		if err := fh.Close(); err != nil {
			return err
		}
	}
	if err := os.WriteFile("/data/hello.txt", []byte("written by the update\n"), 0o644); err != nil {
		return err
	}
	unix.Sync()
	return nil
}

func report() error {
	files, err := filepath.Glob("/data/*.txt")
	if err != nil {
		return err
	}
	sort.Strings(files)
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			return err
		}
		fmt.Printf("sysinit: %s=%q\n", filepath.Base(f), strings.TrimSpace(string(b)))
	}
	return nil
}

// writeRaw writes two 4 KiB blocks to the block device dev with O_DIRECT, so
// both go to the disk at once, past the page cache: "synced TOKEN" at 4096,
// then fdatasync (a flush of the disk's cache), then "unsynced TOKEN" at 0,
// acknowledged by the disk but never flushed.
func writeRaw(dev, token string) error {
	f, err := os.OpenFile(dev, os.O_RDWR|unix.O_DIRECT, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	// O_DIRECT needs an aligned buffer: a page of its own.
	buf, err := unix.Mmap(-1, 0, 4096, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_ANON|unix.MAP_PRIVATE)
	if err != nil {
		return err
	}
	defer unix.Munmap(buf)
	block := func(s string, off int64) error {
		clear(buf)
		copy(buf, s+"\n")
		_, err := f.WriteAt(buf, off)
		return err
	}
	if err := block("synced "+token, 4096); err != nil {
		return err
	}
	if err := unix.Fdatasync(int(f.Fd())); err != nil {
		return err
	}
	return block("unsynced "+token, 0)
}

func writeSynced(path, content string) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	if _, err := f.WriteString(content); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	d, err := os.Open(filepath.Dir(path))
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// unpinCOW clears the immutable flag of /data/.cpinit/cow (FS_IOC_SETFLAGS),
// deletes it and flushes the journal (FIFREEZE/FITHAW, as a clean unmount
// would), so its blocks are free for the workload's files.
func unpinCOW() error {
	const cow = "/data/.cpinit/cow"
	f, err := os.Open(cow)
	if err != nil {
		return err
	}
	flags, err := unix.IoctlGetInt(int(f.Fd()), unix.FS_IOC_GETFLAGS)
	if err == nil {
		err = unix.IoctlSetPointerInt(int(f.Fd()), unix.FS_IOC_SETFLAGS, flags&^0x10) // FS_IMMUTABLE_FL
	}
	f.Close()
	if err != nil {
		return fmt.Errorf("%s: %w", cow, err)
	}
	if err := os.Remove(cow); err != nil {
		return err
	}
	d, err := os.Open("/data")
	if err != nil {
		return err
	}
	defer d.Close()
	const fiFreeze, fiThaw = 0xC0045877, 0xC0045878
	if err := unix.IoctlSetInt(int(d.Fd()), fiFreeze, 0); err != nil {
		return fmt.Errorf("FIFREEZE /data: %w", err)
	}
	return unix.IoctlSetInt(int(d.Fd()), fiThaw, 0)
}
