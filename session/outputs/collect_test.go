package outputs

import (
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/codegw/codegw"
	"github.com/codegw/codegw/session/artifact"

	"github.com/codegw/codegw/internal/testcheck"
)

// writeFiles creates name → content files in dir.
func writeFiles(t *testing.T, dir string, files map[string]string) {
	t.Helper()
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func TestCollectAll(t *testing.T) {
	out := t.TempDir()
	store := newTestStore(t)
	secretDir := t.TempDir()
	secret := filepath.Join(secretDir, "passwd.txt")
	os.WriteFile(secret, []byte("root:x:0:0"), 0o644)

	writeFiles(t, out, map[string]string{
		"result.md":   "# Hello",
		"data.CSV":    "a,b\n",
		"notes.txt":   "n",
		"big.log":     strings.Repeat("x", 101),
		"script.py":   "print(1)",
		"noext":       "x",
		".hidden.txt": "h",
		"报告.json":     "{}",
	})
	os.Symlink(secret, filepath.Join(out, "passwd.txt"))
	os.Symlink("/etc/passwd", filepath.Join(out, "etc.txt"))
	os.Symlink(filepath.Join(out, "result.md"), filepath.Join(out, "inner.md"))
	os.Mkdir(filepath.Join(out, "sub.txt"), 0o755)
	os.Mkdir(filepath.Join(out, "sub"), 0o755)
	writeFiles(t, filepath.Join(out, "sub"), map[string]string{"deep.txt": "d"})
	if err := syscall.Mkfifo(filepath.Join(out, "pipe.txt"), 0o644); err != nil {
		t.Fatal(err)
	}

	files, skipped, err := Collect(out, nil, Limits{MaxFileBytes: 100}, store)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, f := range files {
		got = append(got, f.OriginalName)
		if !artifact.ValidName(f.Filename) || f.URL != "/files/"+f.Filename {
			t.Errorf("file %+v: bad stored name or URL", f)
		}
		if !strings.HasSuffix(f.Filename, strings.ToLower(filepath.Ext(f.OriginalName))) {
			t.Errorf("file %+v: extension not kept", f)
		}
		obj, err := store.Open(f.Filename)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(obj)
		obj.Close()
		want, _ := os.ReadFile(filepath.Join(out, f.OriginalName))
		if string(b) != string(want) || int64(len(b)) != f.SizeBytes || obj.OriginalName != f.OriginalName {
			t.Errorf("%s stored as %q (%d bytes, original %q), want %q", f.OriginalName, b, f.SizeBytes, obj.OriginalName, want)
		}
	}
	if w := "data.CSV notes.txt result.md 报告.json"; strings.Join(got, " ") != w {
		t.Errorf("collected %v, want %s", got, w)
	}
	if len(skipped) != 1 || skipped[0].Name != "big.log" || !strings.Contains(skipped[0].Reason, "100 bytes") {
		t.Errorf("skipped = %+v", skipped)
	}
	// Nothing of the secret reached the store.
	for _, n := range testcheck.DirNames(t, store.Dir) {
		b, _ := os.ReadFile(filepath.Join(store.Dir, n))
		if strings.Contains(string(b), "root:") {
			t.Errorf("store file %s holds the symlink target", n)
		}
	}
}

func TestCollectLimits(t *testing.T) {
	out := t.TempDir()
	writeFiles(t, out, map[string]string{
		"a.txt": strings.Repeat("a", 40),
		"b.txt": strings.Repeat("b", 40),
		"c.txt": strings.Repeat("c", 40), // would pass the total of 100
		"d.txt": strings.Repeat("d", 10), // still fits
		"e.txt": "e",                     // over the count
	})
	store := newTestStore(t)
	files, skipped, err := Collect(out, nil, Limits{AllowedExt: []string{".TXT"}, MaxFiles: 3, MaxFileBytes: 50, MaxTotalBytes: 100}, store)
	if err != nil {
		t.Fatal(err)
	}
	var got, skip []string
	var total int64
	for _, f := range files {
		got = append(got, f.OriginalName)
		total += f.SizeBytes
	}
	for _, s := range skipped {
		skip = append(skip, s.Name+": "+s.Reason)
	}
	if strings.Join(got, " ") != "a.txt b.txt d.txt" || total != 90 {
		t.Errorf("collected %v (%d bytes)", got, total)
	}
	if w := "c.txt: output files exceed 100 bytes in total|e.txt: more than 3 output files"; strings.Join(skip, "|") != w {
		t.Errorf("skipped %q, want %q", strings.Join(skip, "|"), w)
	}
}

func TestCollectNamesAndMissingDir(t *testing.T) {
	store := newTestStore(t)
	files, skipped, err := Collect(filepath.Join(t.TempDir(), "none"), nil, Limits{}, store)
	if err != nil || files == nil || len(files) != 0 || skipped != nil {
		t.Errorf("missing dir: %v %v %v", files, skipped, err)
	}
	out := t.TempDir()
	writeFiles(t, out, map[string]string{"a.txt": "a", "b.txt": "b", "c.txt": "c"})
	files, _, err = Collect(out, []string{"c.txt", "a.txt", "../a.txt", "gone.txt", "a.txt"}, Limits{}, store)
	if err != nil {
		t.Fatal(err)
	}
	if len(files) != 2 || files[0].OriginalName != "a.txt" || files[1].OriginalName != "c.txt" {
		t.Errorf("Collect(names) = %+v", files)
	}
}

func TestCollectRefusesSymlinkedDir(t *testing.T) {
	target := t.TempDir()
	writeFiles(t, target, map[string]string{"secret.txt": "s"})
	base := t.TempDir()
	os.Symlink(target, filepath.Join(base, "output"))
	_, _, err := Collect(filepath.Join(base, "output"), nil, Limits{}, newTestStore(t))
	if err == nil {
		t.Error("collected through a symlinked output dir")
	}
}

func TestCollectStoreFailure(t *testing.T) {
	out := t.TempDir()
	writeFiles(t, out, map[string]string{"a.txt": "a"})
	// A store whose directory cannot be created.
	blocker := filepath.Join(t.TempDir(), "file")
	os.WriteFile(blocker, nil, 0o644)
	_, _, err := Collect(out, nil, Limits{}, &artifact.Store{Dir: filepath.Join(blocker, "store")})
	if err == nil || codegw.ErrorCode(err) != codegw.EINTERNAL {
		t.Errorf("err = %v, want an internal error", err)
	}
}

func TestSnapshotChanged(t *testing.T) {
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{"a.txt": "a", "b.txt": "b", "c.txt": "c"})
	os.Symlink("/etc/passwd", filepath.Join(dir, "link.txt"))
	os.Mkdir(filepath.Join(dir, "sub"), 0o755)
	before := Snapshot(dir)
	if len(before) != 3 {
		t.Fatalf("Snapshot = %v, want the 3 regular files", before)
	}
	if len(Snapshot(filepath.Join(dir, "none"))) != 0 {
		t.Error("Snapshot of a missing dir is not empty")
	}

	writeFiles(t, dir, map[string]string{"b.txt": "bigger", "d.txt": "new"})
	later := time.Now().Add(time.Minute)
	os.Chtimes(filepath.Join(dir, "c.txt"), later, later) // same size, new mtime
	os.Remove(filepath.Join(dir, "a.txt"))
	after := Snapshot(dir)
	if got := strings.Join(Changed(before, after), " "); got != "b.txt c.txt d.txt" {
		t.Errorf("Changed = %q", got)
	}
	if got := Changed(after, after); len(got) != 0 {
		t.Errorf("Changed(same) = %v", got)
	}
	if got := Changed(nil, after); len(got) != 3 {
		t.Errorf("Changed(nil, after) = %v", got)
	}
}
