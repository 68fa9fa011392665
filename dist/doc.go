// Package dist holds files cpinit ships for the running system rather than
// Go code: the systemd units in dist/systemd (see docs/systemd.md). Its tests
// check them with systemd-analyze and check that the documentation quotes
// them as they are.
package dist
