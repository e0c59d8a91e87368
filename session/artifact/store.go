package artifact

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/codegw/codegw"

	"github.com/codegw/codegw/internal/safefs"
)

// Store is a directory of files the gateway serves: images under /images,
// output files under /files. Names are made by the store (128 random bits in
// hex plus an extension), so they cannot be guessed, and Open accepts only
// names of that shape, so a request can never reach another path. The zero
// value is not usable: Dir must be set.
type Store struct {
	// Dir is the directory holding the files (IMAGE_STORE_PATH or
	// FILE_STORE_PATH).
	Dir string
	// URLPrefix is the path the gateway serves Dir under, e.g. "/images"
	// (IMAGE_URL_PREFIX, FILE_URL_PREFIX). An absolute http(s) prefix is
	// used as it is.
	URLPrefix string
	// PublicBaseURL, when set, makes URLs absolute, e.g.
	// "https://ci.example.com" (PUBLIC_BASE_URL).
	PublicBaseURL string
	// Retention is how long a file is kept; Sweep removes older files. Zero
	// keeps files forever.
	Retention time.Duration
	// Logger receives Run's sweep errors; nil means slog.Default().
	Logger *slog.Logger
}

// Object is a stored file opened for reading. Close it when done.
type Object struct {
	*os.File
	// Name is the store name, e.g. "3f…a9.csv".
	Name string
	// ContentType is derived from the extension.
	ContentType string
	// OriginalName is the name the file had when stored with PutNamed, for
	// Content-Disposition; "" when it was stored without one.
	OriginalName string
	// Size and ModTime are those of the opened file.
	Size    int64
	ModTime time.Time
}

// metaSuffix names the sidecar holding an object's original name. A
// sidecar's name has two extensions, so it never matches storeName and
// cannot be opened as an object.
const metaSuffix = ".meta"

// tmpPrefix starts the names of files being written.
const tmpPrefix = ".tmp-"

// storeName matches the names the store makes.
var storeName = regexp.MustCompile(`^[a-z2-7]{26}\.[a-z0-9]{1,16}$`)

// extPattern matches an extension the store accepts, without the dot.
var extPattern = regexp.MustCompile(`^[a-z0-9]{1,16}$`)

// meta is the JSON content of a sidecar.
type meta struct {
	OriginalName string `json:"original_name"`
}

// Init creates Dir if it does not exist, so a misconfigured path fails at
// start rather than on the first execution.
func (s *Store) Init() error {
	if s.Dir == "" {
		return errors.New("files: store directory is not set")
	}
	return os.MkdirAll(s.Dir, 0o755)
}

// Put stores what r yields, at most maxBytes (no limit when maxBytes <= 0),
// under a new name with extension ext ("png", ".csv"; matched case-
// insensitively, letters and digits only). The file appears under its name
// only once complete. A reader that yields more than maxBytes stores
// nothing and fails with ETOOLARGE.
func (s *Store) Put(ext string, r io.Reader, maxBytes int64) (name string, size int64, err error) {
	return s.put(ext, "", r, maxBytes)
}

// PutBytes stores b under a new name with extension ext.
func (s *Store) PutBytes(ext string, b []byte) (name string, err error) {
	name, _, err = s.put(ext, "", bytes.NewReader(b), 0)
	return name, err
}

// PutNamed is Put for a file that has a name of its own: the extension is
// taken from originalName and originalName is kept beside the file, for
// Open to return as the download name.
func (s *Store) PutNamed(originalName string, r io.Reader, maxBytes int64) (name string, size int64, err error) {
	return s.put(filepath.Ext(originalName), originalName, r, maxBytes)
}

func (s *Store) put(ext, original string, r io.Reader, maxBytes int64) (string, int64, error) {
	ext = strings.ToLower(strings.TrimPrefix(ext, "."))
	if !extPattern.MatchString(ext) {
		return "", 0, codegw.Errorf(codegw.EINVALID, "file extension %q cannot be stored", ext)
	}
	if err := s.Init(); err != nil {
		return "", 0, fmt.Errorf("files: store: %w", err)
	}
	name := codegw.NewID() + "." + ext
	if original != "" {
		b, _ := json.Marshal(meta{OriginalName: original})
		if _, err := s.writeAtomic(name+metaSuffix, bytes.NewReader(b), 0); err != nil {
			return "", 0, err
		}
	}
	size, err := s.writeAtomic(name, r, maxBytes)
	if err != nil {
		if original != "" {
			_ = os.Remove(filepath.Join(s.Dir, name+metaSuffix))
		}
		return "", 0, err
	}
	return name, size, nil
}

// writeAtomic writes r to a temporary file and renames it to name.
func (s *Store) writeAtomic(name string, r io.Reader, maxBytes int64) (int64, error) {
	tmp, err := os.CreateTemp(s.Dir, tmpPrefix+"*")
	if err != nil {
		return 0, fmt.Errorf("files: store: %w", err)
	}
	fail := func(err error) (int64, error) {
		tmp.Close()
		os.Remove(tmp.Name())
		return 0, err
	}
	src := r
	if maxBytes > 0 {
		src = io.LimitReader(r, maxBytes+1)
	}
	n, err := io.Copy(tmp, src)
	if err != nil {
		return fail(fmt.Errorf("files: store %s: %w", name, err))
	}
	if maxBytes > 0 && n > maxBytes {
		return fail(codegw.Errorf(codegw.ETOOLARGE, "file is larger than %d bytes", maxBytes))
	}
	if err := tmp.Chmod(0o644); err != nil {
		return fail(fmt.Errorf("files: store %s: %w", name, err))
	}
	if err := tmp.Close(); err != nil {
		os.Remove(tmp.Name())
		return 0, fmt.Errorf("files: store %s: %w", name, err)
	}
	if err := os.Rename(tmp.Name(), filepath.Join(s.Dir, name)); err != nil {
		os.Remove(tmp.Name())
		return 0, fmt.Errorf("files: store %s: %w", name, err)
	}
	return n, nil
}

// ValidName reports whether name has the shape of a name the store makes.
func ValidName(name string) bool { return storeName.MatchString(name) }

// Open opens the stored file name. Any name the store could not have made
// (a path, "..", an unknown shape) and any missing file is ENOTFOUND; the
// name is never used as a path before it is validated, and the file is
// opened without following symlinks.
func (s *Store) Open(name string) (*Object, error) {
	if !ValidName(name) {
		return nil, codegw.Errorf(codegw.ENOTFOUND, "file not found")
	}
	root, err := os.OpenRoot(s.Dir)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, codegw.Errorf(codegw.ENOTFOUND, "file not found")
		}
		return nil, fmt.Errorf("files: open %s: %w", name, err)
	}
	defer root.Close()
	f, fi, err := safefs.OpenRegularIn(root, name)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) || errors.Is(err, safefs.ErrNotRegular) {
			return nil, codegw.Errorf(codegw.ENOTFOUND, "file not found")
		}
		return nil, fmt.Errorf("files: open %s: %w", name, err)
	}
	return &Object{
		File:         f,
		Name:         name,
		ContentType:  ContentType(name),
		OriginalName: s.readMeta(name),
		Size:         fi.Size(),
		ModTime:      fi.ModTime(),
	}, nil
}

// readMeta returns the original name kept beside name, or "".
func (s *Store) readMeta(name string) string {
	f, err := os.OpenInRoot(s.Dir, name+metaSuffix)
	if err != nil {
		return ""
	}
	defer f.Close()
	var m meta
	if err := json.NewDecoder(io.LimitReader(f, 4<<10)).Decode(&m); err != nil {
		return ""
	}
	return m.OriginalName
}

// Remove deletes the stored file name and its sidecar. A missing file is
// not an error.
func (s *Store) Remove(name string) error {
	if !ValidName(name) {
		return codegw.Errorf(codegw.ENOTFOUND, "file not found")
	}
	for _, n := range []string{name, name + metaSuffix} {
		if err := os.Remove(filepath.Join(s.Dir, n)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("files: remove %s: %w", n, err)
		}
	}
	return nil
}

// URL returns the URL a client fetches name from: PublicBaseURL +
// URLPrefix + "/" + name, e.g. "https://ci.example.com/images/<name>", or
// "/images/<name>" without a public base URL.
func (s *Store) URL(name string) string {
	prefix := strings.TrimRight(s.URLPrefix, "/")
	if strings.HasPrefix(prefix, "http://") || strings.HasPrefix(prefix, "https://") {
		return prefix + "/" + name
	}
	if prefix != "" && !strings.HasPrefix(prefix, "/") {
		prefix = "/" + prefix
	}
	return strings.TrimRight(s.PublicBaseURL, "/") + prefix + "/" + name
}

// Sweep removes the store's files (objects, sidecars and abandoned
// temporary files) last modified more than Retention before now, and
// returns how many objects it removed. Other files in Dir are left alone.
// It does nothing when Retention is zero.
func (s *Store) Sweep(now time.Time) (removed int, err error) {
	if s.Retention <= 0 {
		return 0, nil
	}
	entries, err := os.ReadDir(s.Dir)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return 0, nil
		}
		return 0, fmt.Errorf("files: sweep: %w", err)
	}
	cutoff := now.Add(-s.Retention)
	var errs []error
	for _, e := range entries {
		n := e.Name()
		object := ValidName(n)
		if !object && !ValidName(strings.TrimSuffix(n, metaSuffix)) && !strings.HasPrefix(n, tmpPrefix) {
			continue
		}
		if !e.Type().IsRegular() {
			continue
		}
		fi, err := e.Info()
		if err != nil || !fi.ModTime().Before(cutoff) {
			continue // vanished, or young
		}
		if err := os.Remove(filepath.Join(s.Dir, n)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, err)
			continue
		}
		if object {
			removed++
			// The sidecar is as old as its object; remove it even if its
			// own mtime is younger (clock changes).
			_ = os.Remove(filepath.Join(s.Dir, n+metaSuffix))
		}
	}
	if len(errs) > 0 {
		return removed, fmt.Errorf("files: sweep: %w", errors.Join(errs...))
	}
	return removed, nil
}

// Expire sweeps the store (see Sweep) and logs what it removed and any
// error; the caller runs it periodically when Retention is set.
func (s *Store) Expire() {
	log := s.Logger
	if log == nil {
		log = slog.Default()
	}
	n, err := s.Sweep(time.Now())
	if err != nil {
		log.Error("store sweep failed", "dir", s.Dir, "err", err)
	}
	if n > 0 {
		log.Info("store swept", "dir", s.Dir, "removed", n)
	}
}

// contentTypes maps extensions to the Content-Type the gateway serves.
// Text types carry a charset so CJK text displays right. HTML is served as
// plain text: a stored page must never run script in the gateway's origin.
var contentTypes = map[string]string{
	"png":     "image/png",
	"jpg":     "image/jpeg",
	"jpeg":    "image/jpeg",
	"gif":     "image/gif",
	"webp":    "image/webp",
	"svg":     "image/svg+xml",
	"pdf":     "application/pdf",
	"csv":     "text/csv; charset=utf-8",
	"tsv":     "text/tab-separated-values; charset=utf-8",
	"md":      "text/markdown; charset=utf-8",
	"txt":     "text/plain; charset=utf-8",
	"log":     "text/plain; charset=utf-8",
	"html":    "text/plain; charset=utf-8",
	"htm":     "text/plain; charset=utf-8",
	"json":    "application/json",
	"xml":     "application/xml",
	"yaml":    "text/plain; charset=utf-8",
	"yml":     "text/plain; charset=utf-8",
	"xlsx":    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
	"xls":     "application/vnd.ms-excel",
	"zip":     "application/zip",
	"parquet": "application/vnd.apache.parquet",
}

// ContentType returns the Content-Type for a file name, by its extension
// (case-insensitive); application/octet-stream when unknown.
func ContentType(name string) string {
	ext := strings.ToLower(strings.TrimPrefix(filepath.Ext(name), "."))
	if ct, ok := contentTypes[ext]; ok {
		return ct
	}
	return "application/octet-stream"
}
