package artifact

import (
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/codegw/codegw"

	"github.com/codegw/codegw/internal/testcheck"
)

func newTestStore(t *testing.T) *Store {
	t.Helper()
	s := &Store{Dir: filepath.Join(t.TempDir(), "store"), URLPrefix: "/files", Retention: time.Hour}
	if err := s.Init(); err != nil {
		t.Fatal(err)
	}
	return s
}

func TestStorePutOpen(t *testing.T) {
	s := newTestStore(t)
	name, size, err := s.Put(".PNG", strings.NewReader("\x89PNG..."), 100)
	if err != nil {
		t.Fatal(err)
	}
	if !regexp.MustCompile(`^[a-z2-7]{26}\.png$`).MatchString(name) || size != 7 {
		t.Fatalf("Put = %q, %d", name, size)
	}
	obj, err := s.Open(name)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(obj)
	obj.Close()
	if string(b) != "\x89PNG..." || obj.ContentType != "image/png" || obj.Size != 7 || obj.OriginalName != "" || obj.Name != name {
		t.Errorf("Open = %+v, content %q", obj, b)
	}
	fi, _ := os.Stat(filepath.Join(s.Dir, name))
	if fi.Mode().Perm() != 0o644 {
		t.Errorf("mode %v", fi.Mode())
	}

	name2, err := s.PutBytes("svg", []byte("<svg/>"))
	if err != nil || name2 == name {
		t.Fatalf("PutBytes = %q, %v", name2, err)
	}

	named, _, err := s.PutNamed("销售 report.CSV", strings.NewReader("a,b\n"), 0)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasSuffix(named, ".csv") {
		t.Errorf("PutNamed name %q", named)
	}
	obj, err = s.Open(named)
	if err != nil {
		t.Fatal(err)
	}
	obj.Close()
	if obj.OriginalName != "销售 report.CSV" || obj.ContentType != "text/csv; charset=utf-8" {
		t.Errorf("Open(named) = %+v", obj)
	}
	// Only complete objects and sidecars: no temporary files left.
	if got := testcheck.DirNames(t, s.Dir); len(got) != 4 {
		t.Errorf("store holds %v", got)
	}
}

func TestStorePutErrors(t *testing.T) {
	s := newTestStore(t)
	_, _, err := s.Put("txt", strings.NewReader(strings.Repeat("x", 101)), 100)
	testcheck.WantCode(t, err, codegw.ETOOLARGE, "100 bytes")
	if _, _, err := s.Put("txt", strings.NewReader(strings.Repeat("x", 100)), 100); err != nil {
		t.Errorf("exactly at the limit: %v", err)
	}
	for _, ext := range []string{"", ".", "../x", "a/b", "tar.gz", "ex e", strings.Repeat("a", 17), "数据"} {
		_, _, err := s.Put(ext, strings.NewReader("x"), 0)
		testcheck.WantCode(t, err, codegw.EINVALID)
	}
	_, _, err = s.PutNamed("noext", strings.NewReader("x"), 0)
	testcheck.WantCode(t, err, codegw.EINVALID)
	_, _, err = s.Put("txt", errReader{}, 0)
	if err == nil {
		t.Error("Put swallowed a read error")
	}
	// Neither failure left anything behind but the one good file.
	if got := testcheck.DirNames(t, s.Dir); len(got) != 1 {
		t.Errorf("store holds %v", got)
	}
}

type errReader struct{}

func (errReader) Read([]byte) (int, error) { return 0, errors.New("boom") }

func TestStoreOpenRejectsForeignNames(t *testing.T) {
	s := newTestStore(t)
	good, err := s.PutBytes("txt", []byte("x"))
	if err != nil {
		t.Fatal(err)
	}
	named, _, _ := s.PutNamed("a.csv", strings.NewReader("x"), 0)
	secret := filepath.Join(filepath.Dir(s.Dir), "secret.txt")
	os.WriteFile(secret, []byte("secret"), 0o644)
	os.WriteFile(filepath.Join(s.Dir, "plain.txt"), []byte("not ours"), 0o644)
	link := strings.Repeat("a", 32) + ".txt"
	os.Symlink(secret, filepath.Join(s.Dir, link))
	os.Mkdir(filepath.Join(s.Dir, strings.Repeat("b", 32)+".txt"), 0o755)

	for _, name := range []string{
		"", ".", "..", "../x", "../secret.txt", "a/b", "/etc/passwd", secret,
		"plain.txt", named + ".meta", strings.ToUpper(good), good + "/", "./" + good,
		good + "\x00", link, strings.Repeat("b", 32) + ".txt", strings.Repeat("c", 32) + ".txt",
		strings.Repeat("a", 31) + ".txt", "..%2Fsecret.txt",
	} {
		obj, err := s.Open(name)
		if obj != nil {
			obj.Close()
		}
		if codegw.ErrorCode(err) != codegw.ENOTFOUND {
			t.Errorf("Open(%q) = %v, want ENOTFOUND", name, err)
		}
	}
	if err := s.Remove("../secret.txt"); codegw.ErrorCode(err) != codegw.ENOTFOUND {
		t.Errorf("Remove(traversal) = %v", err)
	}
	if _, err := os.Stat(secret); err != nil {
		t.Errorf("secret gone: %v", err)
	}
	if err := s.Remove(named); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Open(named); codegw.ErrorCode(err) != codegw.ENOTFOUND {
		t.Errorf("Open after Remove = %v", err)
	}
	if _, err := os.Stat(filepath.Join(s.Dir, named+".meta")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("sidecar left after Remove: %v", err)
	}
}

func TestStoreURL(t *testing.T) {
	tests := []struct {
		prefix, base, want string
	}{
		{"/images", "", "/images/n.png"},
		{"/images/", "", "/images/n.png"},
		{"images", "", "/images/n.png"},
		{"", "", "/n.png"},
		{"/images", "https://ci.example.com", "https://ci.example.com/images/n.png"},
		{"/images", "https://ci.example.com/", "https://ci.example.com/images/n.png"},
		{"/files", "https://ci.example.com/gw", "https://ci.example.com/gw/files/n.png"},
		{"https://cdn.example.com/img", "https://ci.example.com", "https://cdn.example.com/img/n.png"},
	}
	for _, tt := range tests {
		s := &Store{URLPrefix: tt.prefix, PublicBaseURL: tt.base}
		if got := s.URL("n.png"); got != tt.want {
			t.Errorf("URL with prefix %q base %q = %q, want %q", tt.prefix, tt.base, got, tt.want)
		}
	}
}

func TestContentType(t *testing.T) {
	tests := map[string]string{
		"a.png": "image/png", "a.PNG": "image/png", "a.svg": "image/svg+xml", "a.jpg": "image/jpeg",
		"a.csv": "text/csv; charset=utf-8", "a.md": "text/markdown; charset=utf-8",
		"a.txt": "text/plain; charset=utf-8", "a.log": "text/plain; charset=utf-8",
		"a.json": "application/json", "a.html": "text/plain; charset=utf-8",
		"a.bin": "application/octet-stream", "noext": "application/octet-stream",
	}
	for name, want := range tests {
		if got := ContentType(name); got != want {
			t.Errorf("ContentType(%q) = %q, want %q", name, got, want)
		}
	}
}

func TestStoreSweep(t *testing.T) {
	s := newTestStore(t)
	now := time.Now()
	old := now.Add(-2 * time.Hour)
	oldName, _, _ := s.PutNamed("old.csv", strings.NewReader("x"), 0)
	newName, _, _ := s.PutNamed("new.csv", strings.NewReader("x"), 0)
	oldImg, _ := s.PutBytes("png", []byte("x"))
	foreign := filepath.Join(s.Dir, "keep-me.txt")
	os.WriteFile(foreign, []byte("x"), 0o644)
	staleTmp := filepath.Join(s.Dir, tmpPrefix+"123")
	os.WriteFile(staleTmp, []byte("x"), 0o644)
	for _, p := range []string{oldName, oldName + metaSuffix, oldImg, "keep-me.txt", tmpPrefix + "123"} {
		if err := os.Chtimes(filepath.Join(s.Dir, p), old, old); err != nil {
			t.Fatal(err)
		}
	}
	removed, err := s.Sweep(now)
	if err != nil || removed != 2 {
		t.Fatalf("Sweep = %d, %v; want 2 objects", removed, err)
	}
	want := []string{newName, newName + metaSuffix, "keep-me.txt"}
	got := testcheck.DirNames(t, s.Dir)
	if strings.Join(got, " ") != strings.Join(sortedCopy(want), " ") {
		t.Errorf("after Sweep: %v, want %v", got, sortedCopy(want))
	}
	if _, err := s.Open(newName); err != nil {
		t.Errorf("young file gone: %v", err)
	}

	// Zero retention keeps everything; a missing dir is not an error.
	s.Retention = 0
	if n, err := s.Sweep(now.Add(1000 * time.Hour)); n != 0 || err != nil {
		t.Errorf("Sweep with no retention = %d, %v", n, err)
	}
	missing := &Store{Dir: filepath.Join(t.TempDir(), "none"), Retention: time.Hour}
	if n, err := missing.Sweep(now); n != 0 || err != nil {
		t.Errorf("Sweep of a missing dir = %d, %v", n, err)
	}
}

func sortedCopy(ss []string) []string {
	out := append([]string(nil), ss...)
	for i := range out {
		for j := i + 1; j < len(out); j++ {
			if out[j] < out[i] {
				out[i], out[j] = out[j], out[i]
			}
		}
	}
	return out
}

func TestStoreExpire(t *testing.T) {
	s := newTestStore(t)
	s.Retention = 50 * time.Millisecond
	s.Logger = slog.New(slog.DiscardHandler)
	name, _ := s.PutBytes("txt", []byte("x"))
	s.Expire()
	if _, err := os.Stat(filepath.Join(s.Dir, name)); err != nil {
		t.Fatalf("a file younger than the retention was removed: %v", err)
	}
	time.Sleep(100 * time.Millisecond)
	s.Expire()
	if _, err := os.Stat(filepath.Join(s.Dir, name)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("Expire did not remove the old file: %v", err)
	}
}

func TestStoreConcurrentPut(t *testing.T) {
	s := newTestStore(t)
	var wg sync.WaitGroup
	names := make([]string, 50)
	for i := range names {
		wg.Add(1)
		go func() {
			defer wg.Done()
			names[i], _ = s.PutBytes("txt", []byte("x"))
		}()
	}
	wg.Wait()
	seen := map[string]bool{}
	for _, n := range names {
		if n == "" || seen[n] {
			t.Fatalf("bad or duplicate name %q", n)
		}
		seen[n] = true
	}
}
