package dmsnap

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// DefaultControlPath is the device-mapper control node (DM_DIR "/" DM_CONTROL_NODE).
const DefaultControlPath = "/dev/mapper/control"

// Client talks to the device-mapper driver through ioctls on the control
// node. Methods are safe for sequential use; the kernel serialises ioctls on
// each device itself.
type Client struct {
	fd  int
	sys *sysOps // nil: the real kernel; tests substitute a fake

	// NodeDir is where Create makes block device nodes NAME (default
	// /dev/mapper). First-stage init has no udev: nobody else makes them.
	NodeDir string
	// RemoveTries bounds how often Remove retries a device the kernel
	// reports busy (EBUSY: still open, e.g. a lazily closed file or a
	// mount being torn down); RemoveDelay is the pause between tries.
	RemoveTries int
	RemoveDelay time.Duration
}

// sysOps are the points where the package meets the kernel: the ioctl,
// device nodes, direct I/O on the COW and the lock. Host tests replace them
// with a fake device-mapper (fakedm_test.go) to check ordering and crash
// recovery mechanically.
type sysOps struct {
	ioctl      func(fd int, c cmd, buf []byte) error
	makeNode   func(path string, dev Dev) error
	readDirect func(path string, n int) ([]byte, error)
	zeroDirect func(path string, n int64) error
	flush      func(path string) error
	lock       func(fd int) error
	unlock     func(fd int) error
}

var realSys = sysOps{
	ioctl:      sysIoctl,
	makeNode:   makeBlockNode,
	readDirect: readDirect,
	zeroDirect: zeroDirect,
	flush:      flushDevice,
	lock:       lockFD,
	unlock:     unlockFD,
}

func (c *Client) sysops() *sysOps {
	if c.sys != nil {
		return c.sys
	}
	return &realSys
}

// Open opens DefaultControlPath; see OpenControl.
func Open() (*Client, error) { return OpenControl(DefaultControlPath) }

// OpenControl opens the device-mapper control node at path. When the node
// is missing it is created from the misc device number the kernel publishes
// (/sys/class/misc/device-mapper/dev or /proc/misc): without udev nobody
// else will. When the kernel has no device-mapper at all the error wraps
// ErrNoDeviceMapper.
func OpenControl(path string) (*Client, error) {
	fd, err := openControl(path)
	if err != nil {
		return nil, err
	}
	return &Client{fd: fd, NodeDir: filepath.Dir(path), RemoveTries: 50, RemoveDelay: 100 * time.Millisecond}, nil
}

// Close closes the control node.
func (c *Client) Close() error {
	if c.fd < 0 {
		return nil
	}
	err := closeFD(c.fd)
	c.fd = -1
	return err
}

// ioctlNames are the kernel's names for the commands, for error messages.
var ioctlNames = [...]string{
	cmdVersion: "DM_VERSION", cmdRemoveAll: "DM_REMOVE_ALL", cmdListDevices: "DM_LIST_DEVICES",
	cmdDevCreate: "DM_DEV_CREATE", cmdDevRemove: "DM_DEV_REMOVE", cmdDevRename: "DM_DEV_RENAME",
	cmdDevSuspend: "DM_DEV_SUSPEND", cmdDevStatus: "DM_DEV_STATUS", cmdDevWait: "DM_DEV_WAIT",
	cmdTableLoad: "DM_TABLE_LOAD", cmdTableClear: "DM_TABLE_CLEAR", cmdTableDeps: "DM_TABLE_DEPS",
	cmdTableStatus: "DM_TABLE_STATUS", cmdListVersions: "DM_LIST_VERSIONS", cmdTargetMsg: "DM_TARGET_MSG",
	cmdDevSetGeometry: "DM_DEV_SET_GEOMETRY",
}

// call sends one request. build makes the parameter block for a given
// buffer size (0: the smallest that holds the request); when the kernel
// answers DM_BUFFER_FULL_FLAG the block is rebuilt twice as large, up to
// maxBuffer. op names the operation in errors ("create", "status", ...).
func (c *Client) call(op string, command cmd, name string, size int, build func(size int) ([]byte, error)) ([]byte, ioctlHeader, error) {
	prev := 0
	for {
		buf, err := build(size)
		if err != nil {
			return nil, ioctlHeader{}, fmt.Errorf("dm %s %q: %w", op, name, err)
		}
		if len(buf) <= prev {
			// A request that cannot grow (a table load) came back full:
			// asking again would loop.
			return nil, ioctlHeader{}, fmt.Errorf("dm %s %q: kernel answered buffer full to a %d-byte request", op, name, len(buf))
		}
		prev = len(buf)
		for {
			err = c.sysops().ioctl(c.fd, command, buf)
			if !errors.Is(err, syscall.EINTR) {
				break
			}
		}
		if err != nil {
			var errno syscall.Errno
			if errors.As(err, &errno) {
				err = os.NewSyscallError("ioctl "+ioctlNames[command], errno)
			}
			if errors.Is(err, syscall.EINVAL) && command == cmdTableLoad {
				// The kernel logs the target's reason (ti->error) to kmsg only.
				err = fmt.Errorf("%w (the kernel log says why)", err)
			}
			return nil, ioctlHeader{}, fmt.Errorf("dm %s %q: %w", op, name, err)
		}
		h, err := parseHeader(buf)
		if err != nil {
			return nil, ioctlHeader{}, fmt.Errorf("dm %s %q: %w", op, name, err)
		}
		if h.Flags&flagBufferFull == 0 {
			return buf, h, nil
		}
		if len(buf) >= maxBuffer {
			return nil, ioctlHeader{}, fmt.Errorf("dm %s %q: answer does not fit in %d bytes", op, name, maxBuffer)
		}
		size = min(2*len(buf), maxBuffer)
	}
}

// simple sends a request with no input data and an answer buffer of size.
func (c *Client) simple(op string, command cmd, h ioctlHeader, size int) ([]byte, ioctlHeader, error) {
	return c.call(op, command, h.Name, size, func(n int) ([]byte, error) { return newRequest(h, n) })
}

const smallAnswer = 16 << 10 // first guess for answers with a data area

// Version returns the kernel's device-mapper ioctl interface version.
func (c *Client) Version() ([3]uint32, error) {
	_, h, err := c.simple("version", cmdVersion, ioctlHeader{}, 0)
	return h.Version, err
}

// Targets lists the registered target types (DM_LIST_VERSIONS).
func (c *Client) Targets() ([]TargetVersion, error) {
	buf, _, err := c.simple("targets", cmdListVersions, ioctlHeader{}, smallAnswer)
	if err != nil {
		return nil, err
	}
	v, err := decodeVersions(buf)
	if err != nil {
		return nil, fmt.Errorf("dm targets: %w", err)
	}
	return v, nil
}

// snapshotTargets are the targets cpinit needs; all but linear come from
// the dm-snapshot module (which registers snapshot, snapshot-origin and
// snapshot-merge together).
var snapshotTargets = []string{"linear", "snapshot", "snapshot-origin", "snapshot-merge"}

// CheckTargets verifies the kernel has every target cpinit uses, and says
// which module to load if not. Without modprobe (initramfs) the kernel's
// own module autoload on table load cannot help, so check up front.
func (c *Client) CheckTargets() error {
	vs, err := c.Targets()
	if err != nil {
		return err
	}
	return missingTargets(vs)
}

func missingTargets(vs []TargetVersion) error {
	have := map[string]bool{}
	for _, v := range vs {
		have[v.Name] = true
	}
	var missing []string
	for _, t := range snapshotTargets {
		if !have[t] {
			missing = append(missing, t)
		}
	}
	switch {
	case len(missing) == 0:
		return nil
	case len(missing) == 1 && missing[0] == "linear":
		return fmt.Errorf("kernel has no linear target: %w", ErrNoDeviceMapper)
	}
	return fmt.Errorf("missing %s: %w", strings.Join(missing, ", "), ErrNoSnapshotTarget)
}

// Create creates an empty mapped device (no table) with the given uuid
// (may be empty) and makes its node NodeDir/name. It does not use udev
// cookies: nothing waits for udev.
func (c *Client) Create(name, uuid string) (DeviceInfo, error) {
	if name == "" {
		return DeviceInfo{}, fmt.Errorf("dm create: empty device name")
	}
	_, h, err := c.simple("create", cmdDevCreate, ioctlHeader{Name: name, UUID: uuid}, 0)
	if err != nil {
		return DeviceInfo{}, err
	}
	info := infoFromHeader(h)
	if err := c.ensureNode(name, info.Dev); err != nil {
		return info, fmt.Errorf("dm create %q: %w", name, err)
	}
	return info, nil
}

// Load loads t as the device's inactive table; Resume makes it live.
func (c *Client) Load(name string, t Table) (DeviceInfo, error) {
	return c.loadSpecs(name, t.Targets())
}

func (c *Client) loadSpecs(name string, specs []TargetSpec) (DeviceInfo, error) {
	_, h, err := c.call("load", cmdTableLoad, name, 0, func(int) ([]byte, error) {
		return encodeTableLoad(ioctlHeader{Name: name}, specs)
	})
	if err != nil {
		return DeviceInfo{}, err
	}
	return infoFromHeader(h), nil
}

// ClearInactive drops a loaded but not resumed table.
func (c *Client) ClearInactive(name string) error {
	_, _, err := c.simple("clear", cmdTableClear, ioctlHeader{Name: name}, 0)
	return err
}

// SuspendOptions select how a device is suspended.
type SuspendOptions struct {
	// NoFlush: don't wait for in-flight I/O to complete; requeue it instead
	// (DM_NOFLUSH_FLAG). Only for targets that can queue I/O (multipath);
	// cpinit suspends with a flush so every origin write has triggered and
	// committed its copy-out before tables change.
	NoFlush bool
	// SkipLockfs: don't freeze a filesystem mounted on the device
	// (DM_SKIP_LOCKFS_FLAG).
	SkipLockfs bool
}

// Suspend suspends the device: new I/O is held, in-flight I/O is flushed
// (unless NoFlush) and a mounted filesystem is frozen (unless SkipLockfs).
// Suspending a suspended device is a no-op.
func (c *Client) Suspend(name string, o SuspendOptions) error {
	h := ioctlHeader{Name: name, Flags: flagSuspend}
	if o.NoFlush {
		h.Flags |= flagNoflush
	}
	if o.SkipLockfs {
		h.Flags |= flagSkipLockfs
	}
	_, _, err := c.simple("suspend", cmdDevSuspend, h, 0)
	return err
}

// Resume makes a loaded inactive table live (suspending first if needed) and
// resumes I/O. Resuming a running device without an inactive table is a no-op.
func (c *Client) Resume(name string) (DeviceInfo, error) {
	_, h, err := c.simple("resume", cmdDevSuspend, ioctlHeader{Name: name}, 0)
	if err != nil {
		return DeviceInfo{}, err
	}
	return infoFromHeader(h), nil
}

// Remove removes the device and its node. While the kernel answers EBUSY
// (device open) it retries RemoveTries times, RemoveDelay apart, then gives
// up with the EBUSY error.
func (c *Client) Remove(name string) error {
	tries := max(c.RemoveTries, 1)
	var err error
	for i := 0; i < tries; i++ {
		_, _, err = c.simple("remove", cmdDevRemove, ioctlHeader{Name: name}, 0)
		if !errors.Is(err, syscall.EBUSY) {
			break
		}
		time.Sleep(c.RemoveDelay)
	}
	if err != nil {
		if errors.Is(err, syscall.EBUSY) {
			return fmt.Errorf("%w (still busy after %d tries)", err, tries)
		}
		return err
	}
	return c.removeNode(name)
}

// Info returns the device's state (DM_DEV_STATUS). A missing device gives an
// error for which IsNoDevice is true.
func (c *Client) Info(name string) (DeviceInfo, error) {
	_, h, err := c.simple("info", cmdDevStatus, ioctlHeader{Name: name}, 0)
	if err != nil {
		return DeviceInfo{}, err
	}
	return infoFromHeader(h), nil
}

func (c *Client) tableStatus(op, name string, flags uint32) ([]TargetSpec, DeviceInfo, error) {
	buf, h, err := c.simple(op, cmdTableStatus, ioctlHeader{Name: name, Flags: flags}, smallAnswer)
	if err != nil {
		return nil, DeviceInfo{}, err
	}
	specs, err := decodeTargets(buf)
	if err != nil {
		return nil, DeviceInfo{}, fmt.Errorf("dm %s %q: %w", op, name, err)
	}
	return specs, infoFromHeader(h), nil
}

// Table returns the live table as the kernel prints it (`dmsetup table`).
func (c *Client) Table(name string) ([]TargetSpec, error) {
	s, _, err := c.tableStatus("table", name, flagStatusTable)
	return s, err
}

// InactiveTable returns the loaded, not yet resumed table, if any.
func (c *Client) InactiveTable(name string) ([]TargetSpec, error) {
	s, _, err := c.tableStatus("table", name, flagStatusTable|flagQueryInactive)
	return s, err
}

// Status returns each target's status text (`dmsetup status`).
func (c *Client) Status(name string) ([]TargetSpec, error) {
	s, _, err := c.tableStatus("status", name, 0)
	return s, err
}

// List returns every mapped device with its uuid.
func (c *Client) List() ([]DeviceEntry, error) {
	buf, _, err := c.simple("list", cmdListDevices, ioctlHeader{Flags: flagUUID}, smallAnswer)
	if err != nil {
		return nil, err
	}
	l, err := decodeNameList(buf)
	if err != nil {
		return nil, fmt.Errorf("dm list: %w", err)
	}
	return l, nil
}

// WaitEvent blocks until the device's event counter passes eventNr (from a
// previous Info) and returns the new info and status. Targets raise events
// on state changes, e.g. a snapshot becoming invalid; merge progress raises
// none. The ioctl cannot be cancelled; run it on a goroutine you can abandon.
func (c *Client) WaitEvent(name string, eventNr uint32) (DeviceInfo, []TargetSpec, error) {
	buf, h, err := c.simple("wait", cmdDevWait, ioctlHeader{Name: name, EventNr: eventNr}, smallAnswer)
	if err != nil {
		return DeviceInfo{}, nil, err
	}
	specs, err := decodeTargets(buf)
	if err != nil {
		return DeviceInfo{}, nil, fmt.Errorf("dm wait %q: %w", name, err)
	}
	return infoFromHeader(h), specs, nil
}

// Message sends msg to the target mapping sector and returns its answer, if
// it gave one (DM_TARGET_MSG).
func (c *Client) Message(name string, sector uint64, msg string) (string, error) {
	buf, _, err := c.call("message", cmdTargetMsg, name, smallAnswer, func(n int) ([]byte, error) {
		return encodeTargetMsg(ioctlHeader{Name: name}, sector, msg, n)
	})
	if err != nil {
		return "", err
	}
	s, err := decodeMessage(buf)
	if err != nil {
		return "", fmt.Errorf("dm message %q: %w", name, err)
	}
	return s, nil
}

// CreateAndLoad creates the device, loads t and resumes it. If the load or
// resume fails the half-made device is removed again.
func (c *Client) CreateAndLoad(name, uuid string, t Table) (DeviceInfo, error) {
	if _, err := c.Create(name, uuid); err != nil {
		return DeviceInfo{}, err
	}
	if _, err := c.Load(name, t); err != nil {
		return DeviceInfo{}, errors.Join(err, c.Remove(name))
	}
	info, err := c.Resume(name)
	if err != nil {
		return DeviceInfo{}, errors.Join(err, c.Remove(name))
	}
	return info, nil
}

// NodePath is the block device node this client makes for a device.
func (c *Client) NodePath(name string) string {
	dir := c.NodeDir
	if dir == "" {
		dir = "/dev/mapper"
	}
	return filepath.Join(dir, name)
}

// EnsureNode (re)creates the device node of an existing device, e.g. one
// made by another process.
func (c *Client) EnsureNode(name string) (string, error) {
	info, err := c.Info(name)
	if err != nil {
		return "", err
	}
	if err := c.ensureNode(name, info.Dev); err != nil {
		return "", fmt.Errorf("dm node %q: %w", name, err)
	}
	return c.NodePath(name), nil
}

func (c *Client) ensureNode(name string, dev Dev) error {
	return c.sysops().makeNode(c.NodePath(name), dev)
}

func (c *Client) removeNode(name string) error {
	p := c.NodePath(name)
	if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("dm remove %q: node: %w", name, err)
	}
	return nil
}

// parseProcMisc finds the minor number of the device-mapper misc device in
// /proc/misc ("<minor> <name>" per line).
func parseProcMisc(text string) (uint32, bool) {
	for _, line := range strings.Split(text, "\n") {
		f := strings.Fields(line)
		if len(f) == 2 && f[1] == "device-mapper" {
			d, err := ParseDev("10:" + f[0])
			if err == nil {
				return d.Minor, true
			}
		}
	}
	return 0, false
}

// Lock takes an exclusive advisory lock (flock) on the control node, held
// until the returned function is called. The checkpoint operations take it
// so that two cpinit processes (say init and a CLI started from a shell)
// never interleave table changes: one of them clearing the other's freshly
// loaded table, or resuming an origin the other suspended on purpose. dm
// itself has no such lock; tools that don't take it (dmsetup) are not held
// back.
func (c *Client) Lock() (func(), error) {
	if err := c.sysops().lock(c.fd); err != nil {
		return nil, fmt.Errorf("dm lock: %w", err)
	}
	return func() { _ = c.sysops().unlock(c.fd) }, nil
}
