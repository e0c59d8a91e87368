package executorimage

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestWriteTo(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "executor")
	if err := WriteTo(dir); err != nil {
		t.Fatal(err)
	}
	want, err := FS.ReadFile(Launcher)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, Launcher)
	have, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(have, want) {
		t.Fatal("launch.py differs from the embedded copy")
	}

	t.Run("idempotent", func(t *testing.T) {
		old := time.Now().Add(-time.Hour)
		if err := os.Chtimes(path, old, old); err != nil {
			t.Fatal(err)
		}
		if err := WriteTo(dir); err != nil {
			t.Fatal(err)
		}
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if !fi.ModTime().Equal(old) {
			t.Error("an unchanged file was rewritten")
		}
	})

	t.Run("repairs", func(t *testing.T) {
		if err := os.WriteFile(path, []byte("stale"), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := WriteTo(dir); err != nil {
			t.Fatal(err)
		}
		have, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(have, want) {
			t.Error("a changed file was not restored")
		}
		fi, _ := os.Stat(path)
		if fi.Mode().Perm() != 0o644 {
			t.Errorf("mode %v, want 0644", fi.Mode().Perm())
		}
		entries, _ := os.ReadDir(dir)
		for _, e := range entries {
			if e.Name() != Launcher && e.Name() != Zygote && e.Name() != "packages.txt" {
				t.Errorf("left behind: %s", e.Name())
			}
		}
	})
}

func TestPackages(t *testing.T) {
	b, err := FS.ReadFile("packages.txt")
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"python3-ipykernel", "python3-pandas", "python3-matplotlib", "fonts-wqy-microhei"} {
		if !bytes.Contains(b, []byte("\n"+p+"\n")) {
			t.Errorf("packages.txt lacks %s", p)
		}
	}
}
