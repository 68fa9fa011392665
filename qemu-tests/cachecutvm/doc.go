// Package cachecutvm is the cache-losing power-cut campaign (TestCacheCut
// on ext4 userdata, TestCacheCutF2FS on f2fs; issue 15): cuts at counted
// flushes of cpinit's disks served by qemu-tests/cachedisk, each followed by
// boots until the device settles and the checks of docs/TESTING.md. It is
// its own package so that `go test ./...` runs it beside the other QEMU
// suites: the campaign is a third of make test's boots.
package cachecutvm
