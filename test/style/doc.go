// Package style checks rules of STYLE.md that a machine can check: one
// package doc comment per package, and no grab-bag package names.
package style
