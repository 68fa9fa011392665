// Package bootstate is part of cpinit; see ../../shared/DESIGN.md.
package bootstate
