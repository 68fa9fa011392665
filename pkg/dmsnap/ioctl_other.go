//go:build !linux

package dmsnap

import (
	"fmt"
	"os"
)

// Device-mapper exists only on Linux. These stubs let the package (its
// builders, parsers and codec) build and be tested anywhere.

var errNotLinux = fmt.Errorf("device-mapper needs Linux: %w", os.ErrNotExist)

func sysIoctl(int, cmd, []byte) error { return errNotLinux }
func openControl(string) (int, error) {
	return -1, fmt.Errorf("%w: %w", errNotLinux, ErrNoDeviceMapper)
}
func closeFD(int) error                         { return nil }
func makeBlockNode(string, Dev) error           { return errNotLinux }
func DeviceNumber(path string) (Dev, error)     { return Dev{}, errNotLinux }
func DeviceSectors(path string) (uint64, error) { return 0, errNotLinux }

func readDirect(string, int) ([]byte, error) { return nil, errNotLinux }
func zeroDirect(string, int64) error         { return errNotLinux }

func lockFD(int) error         { return errNotLinux }
func unlockFD(int) error       { return nil }
func flushDevice(string) error { return errNotLinux }
