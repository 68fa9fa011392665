// Package dmsnap is part of cpinit; see ../../shared/DESIGN.md.
package dmsnap
