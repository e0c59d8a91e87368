// Package apptest starts the whole service for tests of other packages: a
// small local configuration and a gateway served on a loopback port,
// closed when the test ends.
package apptest

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"testing"

	"github.com/codegw/codegw/app"
)

// Config is app.DefaultConfig with kernel state under a short temporary
// directory (ipc socket paths are limited to 107 bytes), stores under t's
// temporary directory and one warm kernel.
func Config(t testing.TB) app.Config {
	t.Helper()
	state, err := os.MkdirTemp("", "cgt")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(state) })
	c := app.DefaultConfig()
	c.StateDir, c.PoolSize = state, 1
	c.ImageStorePath, c.FileStorePath = filepath.Join(t.TempDir(), "img"), filepath.Join(t.TempDir(), "files")
	c.SnapshotDir = filepath.Join(t.TempDir(), "snapshots")
	return c
}

// Serve opens the service from c, serves it on a loopback port and closes
// it when t ends. It returns the app and its base URL.
func Serve(t testing.TB, c app.Config) (*app.App, string) {
	t.Helper()
	a, err := app.Open(context.Background(), c)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		a.Close()
		t.Fatal(err)
	}
	go a.Serve(ln)
	t.Cleanup(func() { a.Close() })
	return a, "http://" + ln.Addr().String()
}
