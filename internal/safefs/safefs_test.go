package safefs

import (
	"os"
	"path/filepath"
	"testing"
)

func TestOpenRegularRefusesSymlink(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "a.txt"), []byte("a"), 0o644)
	root, err := os.OpenRoot(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer root.Close()
	if f, _, err := OpenRegularIn(root, "a.txt"); err != nil {
		t.Fatal(err)
	} else {
		f.Close()
	}
	os.Symlink("a.txt", filepath.Join(dir, "l.txt"))
	if _, _, err := OpenRegularIn(root, "l.txt"); err == nil {
		t.Error("OpenRegularIn followed a symlink")
	}
}
