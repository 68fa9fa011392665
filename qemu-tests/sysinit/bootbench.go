package main

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// The boot benchmark (qemu-tests/bench, section boot) boots into this
// action with cpinit or a minimal init as the initramfs init. The kernel
// log's timestamps are the clock: the kernel stamps the "Run /init as init
// process" line and this init's marker with the same clock (printk's local
// clock, from 0 at kernel start), so nothing of the host or of the console
// speed gets into the numbers.

// bootbenchMark is the kernel log line that says the next init runs.
const bootbenchMark = "BOOTBENCH next init running"

// kmsgRecord is one /dev/kmsg record.
type kmsgRecord struct {
	us  int64 // printk timestamp, µs since the kernel started
	msg string
}

// bootbench marks its start in the kernel log, prints the log from the
// initramfs unpacking on, unmounts /data (so the next boot finds userdata
// clean) and powers off. It returns only on failure.
func bootbench() error {
	if err := os.WriteFile("/dev/kmsg", []byte("<6>"+bootbenchMark+"\n"), 0); err != nil {
		return fmt.Errorf("bootbench: write the marker to /dev/kmsg: %w", err)
	}
	recs, err := readKmsg()
	if err != nil {
		return fmt.Errorf("bootbench: %w", err)
	}
	runInit, next, from := int64(-1), int64(-1), -1
	for i, r := range recs {
		switch {
		case from < 0 && strings.HasPrefix(r.msg, "Trying to unpack rootfs image"):
			from = i
		case runInit < 0 && strings.HasPrefix(r.msg, "Run /init as init process"):
			runInit = r.us
			if from < 0 {
				from = i
			}
		case r.msg == bootbenchMark:
			next = r.us
		}
	}
	if runInit < 0 || next < 0 {
		return fmt.Errorf("bootbench: the kernel log lacks %q or the marker (%d records)", "Run /init as init process", len(recs))
	}
	w := bufio.NewWriter(os.Stdout)
	for _, r := range recs[from:] {
		fmt.Fprintf(w, "BOOTBENCH kmsg %d %s\n", r.us, r.msg)
	}
	fmt.Fprintf(w, "BOOTBENCH run_init_us=%d next_init_us=%d\n", runInit, next)
	w.Flush()
	if err := unix.Unmount("/data", 0); err != nil {
		fmt.Printf("BOOTBENCH warning: umount /data: %v\n", err)
	}
	unix.Sync()
	fmt.Println("BOOTBENCH done")
	_ = unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
	for {
		time.Sleep(time.Hour)
	}
}

// readKmsg reads every record /dev/kmsg still holds. Raw non-blocking
// reads: an os.File would wait in the poller at the end instead of
// returning EAGAIN.
func readKmsg() ([]kmsgRecord, error) {
	fd, err := unix.Open("/dev/kmsg", unix.O_RDONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: "/dev/kmsg", Err: err}
	}
	defer unix.Close(fd)
	var recs []kmsgRecord
	buf := make([]byte, 8192)
	for {
		n, err := unix.Read(fd, buf)
		switch {
		case errors.Is(err, unix.EAGAIN):
			return recs, nil
		case errors.Is(err, unix.EPIPE):
			continue // records overwritten before we read them
		case errors.Is(err, unix.EINTR):
			continue
		case err != nil:
			return nil, &os.PathError{Op: "read", Path: "/dev/kmsg", Err: err}
		}
		if r, ok := parseKmsg(string(buf[:n])); ok {
			recs = append(recs, r)
		}
	}
}

// parseKmsg parses "prio,seq,usec,flags[,…];message\n[ KEY=value\n…]"
// (Documentation/ABI/testing/dev-kmsg).
func parseKmsg(s string) (kmsgRecord, bool) {
	head, msg, ok := strings.Cut(s, ";")
	if !ok {
		return kmsgRecord{}, false
	}
	f := strings.Split(head, ",")
	if len(f) < 3 {
		return kmsgRecord{}, false
	}
	us, err := strconv.ParseInt(f[2], 10, 64)
	if err != nil {
		return kmsgRecord{}, false
	}
	msg, _, _ = strings.Cut(msg, "\n")
	return kmsgRecord{us: us, msg: msg}, true
}
