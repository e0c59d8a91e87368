package outputs

import (
	"cmp"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/codegw/codegw"
	"github.com/codegw/codegw/session/artifact"

	"github.com/codegw/codegw/internal/safefs"
)

// Limits bounds the files collected from an output directory.
type Limits struct {
	// AllowedExt lists the extensions collected, without dots, matched
	// case-insensitively (OUTPUT_ALLOWED_EXTENSIONS).
	AllowedExt []string
	// MaxFiles is the most files collected per call (OUTPUT_MAX_FILES).
	MaxFiles int
	// MaxFileBytes bounds each file; larger files are skipped
	// (OUTPUT_FILE_MAX_BYTES).
	MaxFileBytes int64
	// MaxTotalBytes bounds the files of one call together
	// (OUTPUT_TOTAL_MAX_BYTES).
	MaxTotalBytes int64
}

// DefaultLimits returns the limits used when none are configured.
func DefaultLimits() Limits {
	return Limits{
		AllowedExt:    []string{"md", "csv", "txt", "json", "log"},
		MaxFiles:      10,
		MaxFileBytes:  10 << 20,
		MaxTotalBytes: 50 << 20,
	}
}

// withDefaults fills zero fields from DefaultLimits.
func (l Limits) withDefaults() Limits {
	d := DefaultLimits()
	if len(l.AllowedExt) == 0 {
		l.AllowedExt = d.AllowedExt
	}
	l.MaxFiles = cmp.Or(max(l.MaxFiles, 0), d.MaxFiles)
	l.MaxFileBytes = cmp.Or(max(l.MaxFileBytes, 0), d.MaxFileBytes)
	l.MaxTotalBytes = cmp.Or(max(l.MaxTotalBytes, 0), d.MaxTotalBytes)
	return l
}

// allows reports whether the extension of name is allowed.
func (l Limits) allows(name string) bool {
	ext := strings.ToLower(strings.TrimPrefix(filepath.Ext(name), "."))
	if ext == "" {
		return false
	}
	for _, a := range l.AllowedExt {
		if strings.EqualFold(strings.TrimPrefix(strings.TrimSpace(a), "."), ext) {
			return true
		}
	}
	return false
}

// Skipped is a file in the output directory that was not collected, and why.
type Skipped struct {
	// Name is the file's name in the output directory.
	Name string `json:"name"`
	// Reason says which limit it broke, for the caller to show.
	Reason string `json:"reason"`
}

// Collect copies files from dir into store: only regular files directly in
// dir (no recursion, no dot files), whose extension is allowed, never
// through a symlink, within the count and size limits. Files over a limit are
// skipped, not truncated, and reported in skipped; an extension that is not
// allowed or a non-regular entry is ignored silently. When names is non-nil
// only those names are considered (e.g. those Changed reported). The result
// is in name order. A missing dir yields nothing. Zero limits take their
// value from DefaultLimits.
//
// The directory belongs to untrusted code that may still be running, so
// each file is checked with Lstat and opened without following symlinks,
// and the opened file must be the regular file that Lstat saw.
func Collect(dir string, names []string, lim Limits, store *artifact.Store) (files []codegw.OutputFile, skipped []Skipped, err error) {
	lim = lim.withDefaults()
	files = []codegw.OutputFile{}
	root, err := safefs.OpenDir(dir)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return files, nil, nil
		}
		return nil, nil, fmt.Errorf("files: collect %s: %w", dir, err)
	}
	defer root.Close()

	if names == nil {
		names, err = readDirNames(root)
		if err != nil {
			return nil, nil, fmt.Errorf("files: collect %s: %w", dir, err)
		}
	} else {
		names = append([]string(nil), names...)
	}
	sort.Strings(names)

	var total int64
	for i, name := range names {
		if i > 0 && names[i-1] == name {
			continue
		}
		if name == "" || strings.HasPrefix(name, ".") || strings.ContainsAny(name, `/\`) || !lim.allows(name) {
			continue
		}
		if len(files) >= lim.MaxFiles {
			skipped = append(skipped, Skipped{name, fmt.Sprintf("more than %d output files", lim.MaxFiles)})
			continue
		}
		f, fi, err := safefs.OpenRegularIn(root, name)
		if err != nil {
			continue // not a regular file, a symlink, or gone
		}
		size := fi.Size()
		switch {
		case size > lim.MaxFileBytes:
			f.Close()
			skipped = append(skipped, Skipped{name, fmt.Sprintf("larger than %d bytes", lim.MaxFileBytes)})
			continue
		case total+size > lim.MaxTotalBytes:
			f.Close()
			skipped = append(skipped, Skipped{name, fmt.Sprintf("output files exceed %d bytes in total", lim.MaxTotalBytes)})
			continue
		}
		// The file may grow while it is copied: copy no more than both
		// limits allow, and skip it if it went past them.
		limit := min(lim.MaxFileBytes, lim.MaxTotalBytes-total)
		stored, n, err := store.PutNamed(name, f, limit)
		f.Close()
		if err != nil {
			if codegw.ErrorCode(err) == codegw.ETOOLARGE {
				skipped = append(skipped, Skipped{name, fmt.Sprintf("grew past %d bytes while being copied", limit)})
				continue
			}
			return nil, nil, err
		}
		total += n
		files = append(files, codegw.OutputFile{
			Filename:     stored,
			OriginalName: name,
			SizeBytes:    n,
			URL:          store.URL(stored),
		})
	}
	return files, skipped, nil
}

// readDirNames lists the entries of root.
func readDirNames(root *os.Root) ([]string, error) {
	d, err := root.Open(".")
	if err != nil {
		return nil, err
	}
	defer d.Close()
	return d.Readdirnames(-1)
}

// FileState is what Snapshot records of a file.
type FileState struct {
	// Size is the file's length in bytes.
	Size int64
	// ModTime is the file's modification time.
	ModTime time.Time
}

// Snapshot records the size and modification time of the regular files
// directly in dir (symlinks and directories excluded). A missing or
// unreadable dir yields an empty map.
func Snapshot(dir string) map[string]FileState {
	out := map[string]FileState{}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return out
	}
	for _, e := range entries {
		if !e.Type().IsRegular() {
			continue
		}
		fi, err := e.Info()
		if err != nil || !fi.Mode().IsRegular() {
			continue
		}
		out[e.Name()] = FileState{Size: fi.Size(), ModTime: fi.ModTime()}
	}
	return out
}

// Changed returns, in name order, the files of after that are not in before
// or whose size or modification time differ. Removed files are not
// reported.
func Changed(before, after map[string]FileState) []string {
	var names []string
	for name, a := range after {
		b, ok := before[name]
		if !ok || b.Size != a.Size || !b.ModTime.Equal(a.ModTime) {
			names = append(names, name)
		}
	}
	sort.Strings(names)
	return names
}
