// Package pid1 holds what any cpinit process running as PID 1 needs before it
// can do real work: the early mounts, kernel module loading, logging to the
// console and the kernel log, and a way to stop the machine that never lets
// PID 1 exit.
//
// A Go program that returns from main as PID 1 makes the kernel panic
// ("Attempted to kill init!"), so every path out of an init goes through
// Halt, which syncs, asks the kernel to power off, halt or reboot, and then
// blocks forever.
//
// Both cmds/cpinit and the QEMU test init (qemu-tests/guestinit) use it.
package pid1
