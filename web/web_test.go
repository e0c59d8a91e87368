package web

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/gofiber/fiber/v2"
)

func TestServe(t *testing.T) {
	app := fiber.New()
	Mount(app)
	app.Use(func(c *fiber.Ctx) error { return c.Status(404).SendString("no route") })
	for _, tc := range []struct {
		path, status, ctype, contains string
	}{
		{"/", "200", "text/html", `src="/playground/app.js"`},
		{"/playground/app.js", "200", "text/javascript", "/api/v1/execute"},
		{"/playground/editor.js", "200", "text/javascript", "CodeGWEditor"},
		{"/playground/app.css", "200", "text/css", "#editor"},
		{"/playground/", "404", "", "no route"},
		{"/playground/missing.js", "404", "", "no route"},
		{"/playground/../web.go", "404", "", "no route"},
		{"/playground/%2e%2e/web.go", "404", "", "no route"},
	} {
		t.Run(tc.path, func(t *testing.T) {
			resp, err := app.Test(httptest.NewRequest("GET", tc.path, nil))
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			if got := resp.Status[:3]; got != tc.status {
				t.Fatalf("status %s, want %s", resp.Status, tc.status)
			}
			if !strings.Contains(string(body), tc.contains) {
				t.Errorf("body lacks %q", tc.contains)
			}
			if tc.status != "200" {
				return
			}
			if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, tc.ctype) {
				t.Errorf("Content-Type %q, want %s", ct, tc.ctype)
			}
			if csp := resp.Header.Get("Content-Security-Policy"); csp != CSP {
				t.Errorf("Content-Security-Policy %q", csp)
			}
		})
	}
}

// TestCSPSelfOnly keeps the policy from growing a remote origin or
// inline or eval'd scripts.
func TestCSPSelfOnly(t *testing.T) {
	for _, bad := range []string{"http:", "https:", "*", "unsafe-eval", "unsafe-hashes", "script-src 'self' 'unsafe-inline'"} {
		if strings.Contains(CSP, bad) {
			t.Errorf("CSP allows %q: %s", bad, CSP)
		}
	}
	if !strings.Contains(CSP, "script-src 'self';") || !strings.Contains(CSP, "default-src 'none';") {
		t.Errorf("CSP must default to none and take scripts from self only: %s", CSP)
	}
	// No page asset may load anything from elsewhere (no CDN).
	entries, err := static.ReadDir("static")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		data, _ := static.ReadFile("static/" + e.Name())
		if e.Name() == "editor.js" {
			continue // the bundle names URLs in comments and strings, loads none
		}
		for _, bad := range []string{"http://", "https://", "//cdn"} {
			if bytes.Contains(data, []byte(bad)) {
				t.Errorf("%s mentions %q", e.Name(), bad)
			}
		}
	}
}

// TestBundleSum checks offline that the committed bundle is the one
// editor/build.sh made from the committed inputs: editing the editor's
// source, lock file or build script without rebuilding, or editing the
// bundle by hand, fails here.
func TestBundleSum(t *testing.T) {
	f, err := os.Open("editor/bundle.sum")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	seen := 0
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		want, name, ok := strings.Cut(sc.Text(), "  ")
		if !ok {
			t.Fatalf("bad line %q", sc.Text())
		}
		data, err := os.ReadFile(filepath.Join("editor", name))
		if err != nil {
			t.Fatal(err)
		}
		sum := sha256.Sum256(data)
		if got := hex.EncodeToString(sum[:]); got != want {
			t.Errorf("%s changed since the bundle was built (sha256 %s, bundle.sum says %s): run web/editor/build.sh", name, got, want)
		}
		seen++
	}
	if seen != 5 {
		t.Errorf("bundle.sum lists %d files, want 5", seen)
	}
}

// TestBundleReproducible rebuilds the bundle from package-lock.json with
// npm and compares it byte for byte with the committed one. It needs npm
// and the npm registry (from the host's npm config); without them it
// skips, and TestBundleSum still holds the bundle to its inputs.
func TestBundleReproducible(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: no npm install")
	}
	if _, err := exec.LookPath("npm"); err != nil {
		t.Skip("npm is not installed; TestBundleSum checks the bundle offline")
	}
	dir := t.TempDir()
	for _, name := range []string{"build.sh", "package.json", "package-lock.json", ".npmrc", "src/editor.js"} {
		data, err := os.ReadFile(filepath.Join("editor", name))
		if err != nil {
			t.Fatal(err)
		}
		os.MkdirAll(filepath.Dir(filepath.Join(dir, name)), 0o755)
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	out := filepath.Join(dir, "editor.js")
	cmd := exec.Command("bash", filepath.Join(dir, "build.sh"), out)
	if msg, err := cmd.CombinedOutput(); err != nil {
		if bytes.Contains(msg, []byte("esbuild")) && !bytes.Contains(msg, []byte("npm error")) {
			t.Fatalf("build failed: %v\n%s", err, msg)
		}
		t.Skipf("npm ci failed (registry unreachable?): %v\n%s", err, msg)
	}
	got, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	want, err := os.ReadFile("static/editor.js")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("rebuilt bundle (%d bytes) differs from static/editor.js (%d bytes): run web/editor/build.sh and commit", len(got), len(want))
	}
}
