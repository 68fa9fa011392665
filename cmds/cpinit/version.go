package main

import (
	"runtime/debug"
	"strings"
)

// version is cpinit's version, stamped at build time:
//
//	go build -ldflags "-X main.version=$(git describe --tags --always --dirty)" ./cmds/cpinit
//
// (mkinitramfs, `make initramfs`, does it through u-root, by the package's
// import path: initramfs.BuildOptions.Version; the tests' cached images
// are not stamped). Unstamped, it is taken
// from the build information the go command records (runtime/debug: the
// module version of `go install ...@v1.2.3`, or the VCS revision of a build
// in a git checkout), and "unknown" when there is none.
var version string

// cpinitVersion is the version `cpinit version` and `status --json` report.
func cpinitVersion() string {
	if version != "" {
		return version
	}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown"
	}
	if v := bi.Main.Version; v != "" && v != "(devel)" {
		return v
	}
	var rev, modified string
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			modified = s.Value
		}
	}
	if rev == "" {
		return "unknown"
	}
	if len(rev) > 12 {
		rev = rev[:12]
	}
	v := []string{"devel", rev}
	if modified == "true" {
		v = append(v, "dirty")
	}
	return strings.Join(v, "-")
}
