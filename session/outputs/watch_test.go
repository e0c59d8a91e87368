package outputs

import (
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/codegw/codegw"
)

// watched is a Tracker on a temporary directory that records what OnFile
// received.
type watched struct {
	*Tracker
	mu  sync.Mutex
	got []codegw.OutputFile
	ch  chan codegw.OutputFile
}

func watchDir(t *testing.T, lim Limits) (*watched, string) {
	t.Helper()
	dir := t.TempDir()
	w := &watched{ch: make(chan codegw.OutputFile, 2048)}
	w.Tracker = &Tracker{Dir: dir, Limits: lim, Store: newTestStore(t), RewriteEvery: 200 * time.Millisecond,
		OnFile: func(f codegw.OutputFile) {
			w.mu.Lock()
			w.got = append(w.got, f)
			w.mu.Unlock()
			w.ch <- f
		}}
	if err := w.Watch(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.stop() })
	return w, dir
}

// next waits for the next file event.
func (w *watched) next(t *testing.T) codegw.OutputFile {
	t.Helper()
	select {
	case f := <-w.ch:
		return f
	case <-time.After(10 * time.Second):
		t.Fatal("no file event within 10s")
		return codegw.OutputFile{}
	}
}

// none checks that no event comes for a while.
func (w *watched) none(t *testing.T, d time.Duration) {
	t.Helper()
	select {
	case f := <-w.ch:
		t.Fatalf("unexpected file event %+v", f)
	case <-time.After(d):
	}
}

// finish ends the run and checks the invariant: the answer lists the last
// version sent of every name, nothing more.
func (w *watched) finish(t *testing.T) []codegw.OutputFile {
	t.Helper()
	files, _, err := w.Finish()
	if err != nil {
		t.Fatal(err)
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	last := map[string]codegw.OutputFile{}
	for _, f := range w.got {
		last[f.OriginalName] = f
	}
	if len(last) != len(files) {
		t.Fatalf("answer has %d files, %d names were sent", len(files), len(last))
	}
	for _, f := range files {
		if last[f.OriginalName] != f {
			t.Errorf("answer lists %+v, the last event was %+v", f, last[f.OriginalName])
		}
	}
	return files
}

func (w *watched) content(t *testing.T, f codegw.OutputFile) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(w.Store.Dir, f.Filename))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestWatchChunksRewriteRename(t *testing.T) {
	w, dir := watchDir(t, Limits{})

	// Written in chunks: one event, after the close, with the full size.
	f, err := os.Create(filepath.Join(dir, "chunks.csv"))
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 5; i++ {
		fmt.Fprintf(f, "row %d\n", i)
		time.Sleep(60 * time.Millisecond)
	}
	w.none(t, 100*time.Millisecond)
	f.Close()
	got := w.next(t)
	if got.OriginalName != "chunks.csv" || got.SizeBytes != 30 || w.content(t, got) != "row 0\nrow 1\nrow 2\nrow 3\nrow 4\n" {
		t.Errorf("chunks: %+v %q", got, w.content(t, got))
	}

	// Rewritten: a new event and a new URL.
	os.WriteFile(filepath.Join(dir, "chunks.csv"), []byte("v2"), 0o644)
	again := w.next(t)
	if again.OriginalName != "chunks.csv" || again.URL == got.URL || w.content(t, again) != "v2" {
		t.Errorf("rewrite: %+v after %+v", again, got)
	}

	// Renamed into place from a hidden temporary file.
	os.WriteFile(filepath.Join(dir, ".tmp-report"), []byte("report"), 0o644)
	if err := os.Rename(filepath.Join(dir, ".tmp-report"), filepath.Join(dir, "report.md")); err != nil {
		t.Fatal(err)
	}
	if r := w.next(t); r.OriginalName != "report.md" || w.content(t, r) != "report" {
		t.Errorf("rename: %+v", r)
	}

	// Never reported: a symlink, a disallowed extension, a directory, a
	// file in a subdirectory, an open without a write.
	secret := filepath.Join(t.TempDir(), "secret.txt")
	os.WriteFile(secret, []byte("secret"), 0o644)
	os.Symlink(secret, filepath.Join(dir, ".link"))
	os.Rename(filepath.Join(dir, ".link"), filepath.Join(dir, "link.txt"))
	os.WriteFile(filepath.Join(dir, "script.py"), []byte("x"), 0o644)
	os.Mkdir(filepath.Join(dir, "sub.txt"), 0o755)
	os.WriteFile(filepath.Join(dir, "sub.txt", "deep.txt"), []byte("d"), 0o644)
	if f, err := os.OpenFile(filepath.Join(dir, "report.md"), os.O_WRONLY, 0); err == nil {
		f.Close()
	}
	w.none(t, 300*time.Millisecond)

	files := w.finish(t)
	if len(files) != 2 || files[0].OriginalName != "chunks.csv" || files[0].URL != again.URL || files[1].OriginalName != "report.md" {
		t.Errorf("answer %+v", files)
	}
}

func TestWatchBurst(t *testing.T) {
	w, dir := watchDir(t, Limits{MaxFiles: 10})
	for i := 0; i < 1000; i++ {
		os.WriteFile(filepath.Join(dir, fmt.Sprintf("f%04d.txt", i)), []byte("x"), 0o644)
	}
	files := w.finish(t)
	if len(files) != 10 || len(w.got) != 10 {
		t.Errorf("a burst of 1000 gave %d events, %d files; want 10", len(w.got), len(files))
	}
}

func TestWatchLimitsAndRewriteSpacing(t *testing.T) {
	w, dir := watchDir(t, Limits{MaxFileBytes: 100, MaxTotalBytes: 150})
	os.WriteFile(filepath.Join(dir, "big.txt"), []byte(strings.Repeat("b", 101)), 0o644)
	os.WriteFile(filepath.Join(dir, "a.txt"), []byte(strings.Repeat("a", 100)), 0o644)
	if f := w.next(t); f.OriginalName != "a.txt" {
		t.Fatalf("got %+v", f)
	}
	// Rewritten many times at once: coalesced into versions at least
	// RewriteEvery apart, the last one last.
	start := time.Now()
	for i := 0; i < 50; i++ {
		os.WriteFile(filepath.Join(dir, "n.txt"), []byte(fmt.Sprint(i)), 0o644)
		time.Sleep(10 * time.Millisecond)
	}
	took := time.Since(start)
	// Over the total: 100 + 60 > 150.
	os.WriteFile(filepath.Join(dir, "c.txt"), []byte(strings.Repeat("c", 60)), 0o644)
	files := w.finish(t)
	var n []string
	for _, f := range w.got {
		if f.OriginalName == "n.txt" {
			n = append(n, w.content(t, f))
		}
	}
	if max := int(took/(200*time.Millisecond)) + 2; len(n) == 0 || len(n) > max || n[len(n)-1] != "49" {
		t.Errorf("versions of n.txt over %v: %v (at most %d, the last 49)", took, n, max)
	}
	var names []string
	for _, f := range files {
		names = append(names, f.OriginalName)
	}
	if !slices.Equal(names, []string{"a.txt", "n.txt"}) {
		t.Errorf("answer %v", names)
	}
}

// TestWatchOpenAtEnd: a file still open when the run ends is collected by
// the end scan, once, and so is a file written before Watch.
func TestWatchOpenAtEnd(t *testing.T) {
	w, dir := watchDir(t, Limits{})
	f, _ := os.Create(filepath.Join(dir, "open.log"))
	defer f.Close()
	f.WriteString("partial")
	os.WriteFile(filepath.Join(dir, "closed.log"), []byte("done"), 0o644)
	if g := w.next(t); g.OriginalName != "closed.log" {
		t.Fatalf("got %+v", g)
	}
	files := w.finish(t)
	if len(files) != 2 || files[1].OriginalName != "open.log" || files[1].SizeBytes != 7 {
		t.Errorf("answer %+v", files)
	}
}

// TestWatchSeen: in a session, the files the previous run left unchanged
// are not sent again, a changed one is.
func TestWatchSeen(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "old.txt"), []byte("old"), 0o644)
	os.WriteFile(filepath.Join(dir, "other.txt"), []byte("x"), 0o644)
	var got []string
	o := &Tracker{Dir: dir, Store: newTestStore(t), Seen: Snapshot(dir), OnFile: func(f codegw.OutputFile) { got = append(got, f.OriginalName) }}
	if err := o.Watch(); err != nil {
		t.Fatal(err)
	}
	if f, err := os.OpenFile(filepath.Join(dir, "old.txt"), os.O_WRONLY, 0); err == nil {
		f.Close() // closed after opening for writing, unchanged
	}
	time.Sleep(10 * time.Millisecond)
	os.WriteFile(filepath.Join(dir, "other.txt"), []byte("changed"), 0o644)
	files, seen, err := o.Finish()
	if err != nil || len(files) != 1 || files[0].OriginalName != "other.txt" || !slices.Equal(got, []string{"other.txt"}) {
		t.Errorf("files %+v, events %v, err %v", files, got, err)
	}
	if len(seen) != 2 {
		t.Errorf("seen %v", seen)
	}
}

// TestWatchFallback: without a directory to watch, Finish still scans.
func TestWatchFallback(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "later")
	o := &Tracker{Dir: dir, Store: newTestStore(t)}
	if err := o.Watch(); err == nil {
		t.Fatal("watched a missing directory")
	}
	os.Mkdir(dir, 0o755)
	os.WriteFile(filepath.Join(dir, "a.txt"), []byte("a"), 0o644)
	files, _, err := o.Finish()
	if err != nil || len(files) != 1 {
		t.Errorf("files %+v, err %v", files, err)
	}
	// A symlink in place of the directory is refused.
	link := filepath.Join(t.TempDir(), "out")
	os.Symlink(dir, link)
	if err := (&Tracker{Dir: link, Store: newTestStore(t)}).Watch(); err == nil {
		t.Error("watched through a symlink")
	}
}

func inotifyEvent(mask uint32, name string, pad int) []byte {
	b := make([]byte, unix.SizeofInotifyEvent+len(name)+pad)
	binary.NativeEndian.PutUint32(b[4:], mask)
	binary.NativeEndian.PutUint32(b[12:], uint32(len(name)+pad))
	copy(b[unix.SizeofInotifyEvent:], name)
	return b
}

func FuzzParseEvents(f *testing.F) {
	f.Add(inotifyEvent(unix.IN_CLOSE_WRITE, "a.csv", 3))
	f.Add(append(inotifyEvent(unix.IN_MOVED_TO, "b.txt", 11), inotifyEvent(unix.IN_Q_OVERFLOW, "", 0)...))
	f.Add([]byte{1, 2, 3})
	f.Add(inotifyEvent(unix.IN_CLOSE_WRITE, "x", 0)[:unix.SizeofInotifyEvent])
	f.Fuzz(func(t *testing.T, b []byte) {
		total := 0
		parseEvents(b, func(mask uint32, name string) {
			total += unix.SizeofInotifyEvent + len(name)
			if strings.IndexByte(name, 0) >= 0 {
				t.Errorf("name %q holds a NUL", name)
			}
		})
		if total > len(b) {
			t.Errorf("parsed %d bytes of %d", total, len(b))
		}
	})
}
