//go:build race

package e2e_test

// The instances are built with the race detector when the tests are.
func init() { buildFlags = append(buildFlags, "-race") }
