package pid1

import (
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
)

// Logger writes each line to the console and to the kernel log. Early boot
// has no syslog: the console is what a person at a serial port sees, and
// /dev/kmsg is what survives in `dmesg` and pstore. Lines are prefixed
// "cpinit: " on the console; kmsg gets a syslog level ("<3>" error, "<6>"
// info, as u-root's pkg/ulog/klog_linux.go writes it).
type Logger struct {
	mu      sync.Mutex
	console io.Writer
	kmsg    io.Writer
	prefix  string
}

// NewLogger returns a logger that writes to stdout until Reopen is called.
func NewLogger(prefix string) *Logger {
	return &Logger{console: os.Stdout, prefix: prefix}
}

// Reopen points the logger at /dev/console and /dev/kmsg. Call it once
// devtmpfs is mounted; before that only the inherited stdout exists. Either
// device failing to open leaves the previous writer in place.
func (l *Logger) Reopen() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if f, err := os.OpenFile("/dev/console", os.O_WRONLY, 0); err == nil {
		l.console = f
	}
	if f, err := os.OpenFile("/dev/kmsg", os.O_WRONLY, 0); err == nil {
		l.kmsg = f
	}
}

// OpenKmsg adds /dev/kmsg and keeps the inherited stdout as the console:
// for cpinit run by another init (`cpinit boot-step` in a distribution's
// initramfs), whose stdout the init has already pointed at the console or
// the journal. If /dev/kmsg does not open, lines go to stdout only.
func (l *Logger) OpenKmsg() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if f, err := os.OpenFile("/dev/kmsg", os.O_WRONLY, 0); err == nil {
		l.kmsg = f
	}
}

// Console returns the writer that reaches the console.
func (l *Logger) Console() io.Writer {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.console
}

func (l *Logger) write(level int, format string, args ...any) {
	msg := strings.TrimRight(fmt.Sprintf(format, args...), "\n")
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, line := range strings.Split(msg, "\n") {
		fmt.Fprintf(l.console, "%s%s\n", l.prefix, line)
		if l.kmsg != nil {
			// One write per record: /dev/kmsg takes one line per write(2).
			fmt.Fprintf(l.kmsg, "<%d>%s%s\n", level, l.prefix, line)
		}
	}
}

// Printf logs an informational line.
func (l *Logger) Printf(format string, args ...any) { l.write(6, format, args...) }

// Errorf logs an error line.
func (l *Logger) Errorf(format string, args ...any) { l.write(3, format, args...) }
