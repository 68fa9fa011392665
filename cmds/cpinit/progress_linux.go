package main

import (
	"fmt"
	"io"
	"os"
	"time"

	"github.com/cpinit/cpinit/pkg/dmsnap"
	"golang.org/x/term"
)

// Progress is for people at a terminal. When stdout is a pipe or a file (a
// script, a systemd unit's journal) long operations print only their result
// line, so logs stay one line per event.

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// step shows what a long, indivisible operation is doing on a terminal
// ("allocating ... " then "done in 1.2s"); it prints nothing otherwise. The
// returned function ends the line.
func step(w io.Writer, format string, a ...any) func() {
	if !isTerminal(w) {
		return func() {}
	}
	start := time.Now()
	fmt.Fprintf(w, format+"... ", a...)
	return func() { fmt.Fprintf(w, "done in %s\n", time.Since(start).Round(time.Millisecond)) }
}

// progressBar draws a rollback's progress bar on a terminal (percent, MiB
// left, MiB/s, time left), and stays quiet (one line at the end) when
// stdout is not one. method names what runs (mergeKernel, mergeRestore).
func progressBar(w io.Writer) func(method string) func(dmsnap.Progress) {
	tty := isTerminal(w)
	return func(method string) func(dmsnap.Progress) {
		label := progressLabel(method)
		return func(p dmsnap.Progress) {
			const mib = 1 << 20
			if !tty {
				if p.Done {
					fmt.Fprintf(w, "%s: %.1f MiB copied back in %s, %.1f MiB/s\n",
						label, float64(p.BytesTotal)/mib, p.Elapsed.Round(time.Millisecond), p.Rate/mib)
				}
				return
			}
			pct := progressPercent(p)
			const width = 40
			n := int(pct / 100 * width)
			bar := make([]byte, width)
			for i := range bar {
				bar[i] = ' '
				if i < n {
					bar[i] = '#'
				}
			}
			eta := "--"
			if p.Done {
				eta = "0s"
			} else if p.ETA > 0 {
				eta = p.ETA.Round(time.Second).String()
			}
			// Padded: each redraw covers the last, which may be longer.
			fmt.Fprintf(w, "\r%s [%s] %5.1f%%  %.1f MiB left  %.1f MiB/s  %s left   ", label, bar, pct, float64(p.BytesLeft)/mib, p.Rate/mib, eta)
			if p.Done {
				fmt.Fprintln(w)
			}
		}
	}
}
