// Package fiemap is part of cpinit; see ../../shared/DESIGN.md.
package fiemap
