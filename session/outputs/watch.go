package outputs

import (
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/codegw/codegw"
	"github.com/codegw/codegw/session/artifact"

	"github.com/codegw/codegw/internal/safefs"
)

// Tracker collects the files one execution writes to its output directory,
// under one set of limits: each file as soon as it is complete (closed after
// writing, or renamed into place) while the code runs, when Watch is on, and
// by a scan of what changed when the execution ends (Finish), which
// reconciles whatever the watcher missed. Every stored version goes to
// OnFile once, so what OnFile received equals, name by name (the last
// version of each), what Finish returns.
//
// The rules are Collect's: regular files directly in Dir, allowed
// extensions, never through a symlink, within the limits; MaxFiles counts
// names, MaxTotalBytes every version stored, rewrites included.
type Tracker struct {
	// Dir is the output directory (the kernel's /code/output on the host).
	Dir string
	// Limits bound what is collected; zero fields take their defaults.
	Limits Limits
	// Store keeps the files, under unguessable names.
	Store *artifact.Store
	// Seen is the directory as the previous execution left it (nil: empty);
	// files unchanged since are not collected. Finish returns it updated.
	Seen map[string]FileState
	// OnFile receives each stored file: on the watcher's goroutine during
	// the run, on Finish's caller for the files its scan finds.
	OnFile func(codegw.OutputFile)
	// Log receives the skipped files and the watcher's failures; nil means
	// slog.Default().
	Log *slog.Logger
	// Window is how long the watcher waits after a file's completion for
	// more to coalesce into one pass. Default: 20ms.
	Window time.Duration
	// RewriteEvery spaces the versions of one name: a file completed again
	// within it after being stored is stored once more when it ends, the
	// latest version. Default: 1s.
	RewriteEvery time.Duration

	seen     map[string]FileState         // as last stored, or as before the run
	refused  map[string]FileState         // versions skipped for a limit, told once
	latest   map[string]codegw.OutputFile // the last version stored of each name
	storedAt map[string]time.Time
	total    int64
	w        *watcher
}

// watcher is the inotify loop of a Tracker; its goroutine owns root and
// the inotify descriptor, and closes done when it has released them; stop
// owns the eventfd that tells it to end.
type watcher struct {
	ifd, efd int
	root     *os.Root
	done     chan struct{}
}

// maxPending bounds the names waiting in the coalescing window; past it a
// name is left to the end scan.
const maxPending = 4096

// inotify event mask of the watch: a file closed after writing, or moved
// into the directory; the directory itself, never a symlink in its place.
const watchMask = unix.IN_CLOSE_WRITE | unix.IN_MOVED_TO | unix.IN_ONLYDIR | unix.IN_DONT_FOLLOW | unix.IN_EXCL_UNLINK

func (o *Tracker) init() {
	if o.latest != nil {
		return
	}
	o.Limits = o.Limits.withDefaults()
	o.Window = cmp.Or(o.Window, 20*time.Millisecond)
	o.RewriteEvery = cmp.Or(o.RewriteEvery, time.Second)
	if o.Log == nil {
		o.Log = slog.Default()
	}
	o.seen = make(map[string]FileState, len(o.Seen))
	for k, v := range o.Seen {
		o.seen[k] = v
	}
	o.refused = map[string]FileState{}
	o.latest = map[string]codegw.OutputFile{}
	o.storedAt = map[string]time.Time{}
}

// Watch starts reporting files as they are completed. On an error (the
// directory is missing or not one, inotify's limits) nothing is watched and
// Finish's scan collects everything; the caller logs it. Call it at most
// once, before the code runs, and always call Finish.
func (o *Tracker) Watch() error {
	o.init()
	if o.w != nil {
		return errors.New("files: already watching")
	}
	root, err := safefs.OpenDir(o.Dir)
	if err != nil {
		return fmt.Errorf("files: watch %s: %w", o.Dir, err)
	}
	ifd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err != nil {
		root.Close()
		return fmt.Errorf("files: watch %s: inotify: %w", o.Dir, err)
	}
	efd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		root.Close()
		unix.Close(ifd)
		return fmt.Errorf("files: watch %s: eventfd: %w", o.Dir, err)
	}
	if _, err := unix.InotifyAddWatch(ifd, o.Dir, watchMask); err != nil {
		root.Close()
		unix.Close(ifd)
		unix.Close(efd)
		return fmt.Errorf("files: watch %s: %w", o.Dir, err)
	}
	o.w = &watcher{ifd: ifd, efd: efd, root: root, done: make(chan struct{})}
	go o.loop(o.w)
	return nil
}

// stop ends the watcher after it has handled every event already queued
// (the files closed before the call), and waits for it.
func (o *Tracker) stop() {
	w := o.w
	if w == nil {
		return
	}
	o.w = nil
	var one [8]byte
	binary.NativeEndian.PutUint64(one[:], 1)
	for {
		if _, err := unix.Write(w.efd, one[:]); err != unix.EINTR {
			break
		}
	}
	<-w.done
	unix.Close(w.efd) // here, not in loop: the write above must not reach a reused descriptor
}

// loop waits for inotify events, gathers the completed names for a window
// and collects them in name order; told to stop, it reads what is still
// queued, collects it all and releases the watch.
func (o *Tracker) loop(w *watcher) {
	defer close(w.done)
	defer unix.Close(w.ifd) // removes the watch
	defer w.root.Close()
	pending := map[string]time.Time{}
	buf := make([]byte, 64<<10)
	stopping := false
	for {
		timeout := -1
		if len(pending) > 0 {
			next := time.Time{}
			for _, due := range pending {
				if next.IsZero() || due.Before(next) {
					next = due
				}
			}
			timeout = max(0, int((time.Until(next)+time.Millisecond-1)/time.Millisecond))
		}
		fds := []unix.PollFd{{Fd: int32(w.ifd), Events: unix.POLLIN}, {Fd: int32(w.efd), Events: unix.POLLIN}}
		if _, err := unix.Poll(fds, timeout); err != nil && err != unix.EINTR {
			o.Log.Error("output watcher: poll", "err", err)
			stopping = true
		}
		if fds[1].Revents != 0 {
			stopping = true
		}
		now := time.Now()
		for {
			n, err := unix.Read(w.ifd, buf)
			if err == unix.EINTR {
				continue
			}
			if err != nil || n <= 0 {
				break
			}
			parseEvents(buf[:n], func(mask uint32, name string) {
				o.queue(pending, now, mask, name)
			})
		}
		var due []string
		for name, t := range pending {
			if stopping || !t.After(now) {
				due = append(due, name)
			}
		}
		slices.Sort(due)
		for _, name := range due {
			delete(pending, name)
			if err := o.collect(w.root, name); err != nil {
				o.Log.Error("output watcher: collect", "file", name, "err", err)
			}
		}
		if stopping {
			return
		}
	}
}

// queue adds name, completed at now, to the pending names.
func (o *Tracker) queue(pending map[string]time.Time, now time.Time, mask uint32, name string) {
	switch {
	case mask&unix.IN_Q_OVERFLOW != 0:
		o.Log.Warn("output watcher: event queue overflowed; the end scan collects what was missed", "dir", o.Dir)
		return
	case mask&(unix.IN_CLOSE_WRITE|unix.IN_MOVED_TO) == 0 || !o.collectable(name):
		return
	}
	if _, ok := pending[name]; ok {
		return
	}
	if len(pending) >= maxPending {
		return // the end scan has it
	}
	due := now.Add(o.Window)
	if t, ok := o.storedAt[name]; ok && t.Add(o.RewriteEvery).After(due) {
		due = t.Add(o.RewriteEvery)
	}
	pending[name] = due
}

// parseEvents calls fn for each inotify event in b (struct inotify_event
// followed by its NUL-padded name), stopping at a truncated one.
func parseEvents(b []byte, fn func(mask uint32, name string)) {
	for len(b) >= unix.SizeofInotifyEvent {
		mask := binary.NativeEndian.Uint32(b[4:8])
		n := int(binary.NativeEndian.Uint32(b[12:16]))
		if n < 0 || n > len(b)-unix.SizeofInotifyEvent {
			return
		}
		name := b[unix.SizeofInotifyEvent : unix.SizeofInotifyEvent+n]
		if i := strings.IndexByte(string(name), 0); i >= 0 {
			name = name[:i]
		}
		fn(mask, string(name))
		b = b[unix.SizeofInotifyEvent+n:]
	}
}

// collectable reports whether name may be collected at all: a plain name,
// not hidden, with an allowed extension.
func (o *Tracker) collectable(name string) bool {
	return name != "" && !strings.HasPrefix(name, ".") && !strings.ContainsAny(name, `/\`) && o.Limits.allows(name)
}

// collect stores name from root when it is a regular file that changed
// since it was last stored or seen, within the limits, and tells OnFile.
// Only a failure of the store is an error.
func (o *Tracker) collect(root *os.Root, name string) error {
	if !o.collectable(name) {
		return nil
	}
	f, fi, err := safefs.OpenRegularIn(root, name)
	if err != nil {
		return nil // not a regular file, a symlink, or gone
	}
	defer f.Close()
	st := FileState{Size: fi.Size(), ModTime: fi.ModTime()}
	if same(o.seen, name, st) || same(o.refused, name, st) {
		return nil
	}
	lim := o.Limits
	_, known := o.latest[name]
	reason := ""
	switch {
	case !known && len(o.latest) >= lim.MaxFiles:
		reason = fmt.Sprintf("more than %d output files", lim.MaxFiles)
	case st.Size > lim.MaxFileBytes:
		reason = fmt.Sprintf("larger than %d bytes", lim.MaxFileBytes)
	case o.total+st.Size > lim.MaxTotalBytes:
		reason = fmt.Sprintf("output files exceed %d bytes in total", lim.MaxTotalBytes)
	}
	if reason == "" {
		// The file may grow while it is copied: copy no more than both
		// limits allow, and skip it if it went past them.
		limit := min(lim.MaxFileBytes, lim.MaxTotalBytes-o.total)
		stored, n, err := o.Store.PutNamed(name, f, limit)
		switch {
		case codegw.ErrorCode(err) == codegw.ETOOLARGE:
			reason = fmt.Sprintf("grew past %d bytes while being copied", limit)
		case err != nil:
			return err
		default:
			o.total += n
			// The state before the copy: a change during it makes the
			// file differ from seen, so it is collected again.
			o.seen[name] = st
			o.storedAt[name] = time.Now()
			out := codegw.OutputFile{Filename: stored, OriginalName: name, SizeBytes: n, URL: o.Store.URL(stored)}
			o.latest[name] = out
			if o.OnFile != nil {
				o.OnFile(out)
			}
			return nil
		}
	}
	o.refused[name] = st
	o.Log.Info("output file skipped", "file", name, "reason", reason)
	return nil
}

// same reports whether m holds st for name.
func same(m map[string]FileState, name string, st FileState) bool {
	s, ok := m[name]
	return ok && s.Size == st.Size && s.ModTime.Equal(st.ModTime)
}

// Finish stops the watcher, once it has collected the files completed
// before the call, then scans Dir for the files that changed and were not
// collected yet (the watcher missed them, or they were never closed) and
// collects them too. It returns the last version of every file collected,
// in name order, and the directory's state for the next execution's Seen.
func (o *Tracker) Finish() ([]codegw.OutputFile, map[string]FileState, error) {
	o.init()
	o.stop()
	after := Snapshot(o.Dir)
	var err error
	if changed := Changed(o.seen, after); len(changed) > 0 {
		var root *os.Root
		root, err = safefs.OpenDir(o.Dir)
		if err == nil {
			for _, name := range changed {
				if err = o.collect(root, name); err != nil {
					break
				}
			}
			root.Close()
		} else if errors.Is(err, os.ErrNotExist) {
			err = nil
		}
	}
	out := make([]codegw.OutputFile, 0, len(o.latest))
	for _, f := range o.latest {
		out = append(out, f)
	}
	slices.SortFunc(out, func(a, b codegw.OutputFile) int { return strings.Compare(a.OriginalName, b.OriginalName) })
	if err != nil {
		err = fmt.Errorf("files: collect %s: %w", o.Dir, err)
	}
	return out, after, err
}
