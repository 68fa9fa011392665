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

// progressBar draws a merge progress bar on a terminal, and stays quiet
// (one line at the end) when stdout is not one.
func progressBar(w io.Writer) func(dmsnap.Progress) {
	tty := isTerminal(w)
	return func(p dmsnap.Progress) {
		const mib = 1 << 20
		if !tty {
			if p.Done {
				fmt.Fprintf(w, "merge: %.1f MiB copied back in %s\n", float64(p.BytesTotal)/mib, p.Elapsed.Round(time.Millisecond))
			}
			return
		}
		frac := 1.0
		if p.BytesTotal > 0 {
			frac = 1 - float64(p.BytesLeft)/float64(p.BytesTotal)
		}
		const width = 40
		n := int(frac * width)
		bar := make([]byte, width)
		for i := range bar {
			bar[i] = ' '
			if i < n {
				bar[i] = '#'
			}
		}
		fmt.Fprintf(w, "\rmerge [%s] %5.1f%%  %.1f MiB left  %.1f MiB/s", bar, 100*frac, float64(p.BytesLeft)/mib, p.Rate/mib)
		if p.Done {
			fmt.Fprintln(w)
		}
	}
}
