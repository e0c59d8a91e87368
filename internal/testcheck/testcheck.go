// Package testcheck holds the assertions several packages' tests share.
package testcheck

import (
	"errors"
	"os"
	"sort"
	"strings"
	"testing"

	"github.com/codegw/codegw"
)

// DirNames lists dir, sorted; a missing dir lists nothing.
func DirNames(t testing.TB, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	sort.Strings(names)
	return names
}

// WantCode fails the test unless err is a *codegw.Error with code and a
// message containing every one of parts.
func WantCode(t testing.TB, err error, code string, parts ...string) {
	t.Helper()
	var e *codegw.Error
	if !errors.As(err, &e) {
		t.Fatalf("err = %v (%T), want *codegw.Error %s", err, err, code)
	}
	if e.Code != code {
		t.Errorf("code = %s, want %s (err: %v)", e.Code, code, err)
	}
	for _, p := range parts {
		if !strings.Contains(e.Message, p) {
			t.Errorf("message %q does not contain %q", e.Message, p)
		}
	}
}
