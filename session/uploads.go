package session

import (
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/codegw/codegw"
	"github.com/codegw/codegw/internal/safefs"
	"github.com/codegw/codegw/session/inputs"
)

// FileInfo describes a file in the session's input or output directory.
type FileInfo struct {
	Name     string    `json:"name"`
	Size     int64     `json:"size_bytes"`
	Modified time.Time `json:"modified"`
	URL      string    `json:"url,omitempty"`
}

// Upload writes r into /code/input/name, at most maxBytes.
func (s *Session) Upload(name string, r io.Reader, maxBytes int64) (FileInfo, error) {
	s.touch()
	return SaveUpload(filepath.Join(s.k.Process().Dir(), "input"), name, r, maxBytes)
}

// SaveUpload writes r, at most maxBytes, into dir under name made safe
// (inputs.SanitizeName): a file directly in dir, never through a symlink,
// that replaces the old one only once it is whole.
func SaveUpload(dir, name string, r io.Reader, maxBytes int64) (FileInfo, error) {
	clean := inputs.SanitizeName(name)
	if clean == "" {
		return FileInfo{}, codegw.Errorf(codegw.EINVALID, "invalid file name %q", name)
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return FileInfo{}, codegw.WrapError(codegw.EINTERNAL, err, "open input directory")
	}
	defer root.Close()
	tmp := ".upload-" + codegw.NewID()[:12]
	f, err := root.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return FileInfo{}, codegw.WrapError(codegw.EINTERNAL, err, "create upload")
	}
	n, err := io.Copy(f, io.LimitReader(r, maxBytes+1))
	f.Close()
	if err == nil && n > maxBytes {
		err = codegw.Errorf(codegw.ETOOLARGE, "file %q is larger than %d bytes", name, maxBytes)
	}
	if err == nil {
		err = root.Rename(tmp, clean)
	}
	if err != nil {
		root.Remove(tmp)
		if codegw.ErrorCode(err) == codegw.EINTERNAL {
			return FileInfo{}, codegw.WrapError(codegw.EINTERNAL, err, "upload failed")
		}
		return FileInfo{}, err
	}
	return FileInfo{Name: clean, Size: n, Modified: time.Now()}, nil
}

// Outputs lists the regular files in /code/output.
func (s *Session) Outputs() ([]FileInfo, error) {
	s.touch()
	dir := filepath.Join(s.k.Process().Dir(), "output")
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, codegw.WrapError(codegw.EINTERNAL, err, "list output directory")
	}
	out := []FileInfo{}
	for _, e := range entries {
		if !e.Type().IsRegular() {
			continue
		}
		info, err := e.Info()
		if err != nil {
			continue
		}
		out = append(out, FileInfo{Name: e.Name(), Size: info.Size(), Modified: info.ModTime()})
	}
	return out, nil
}

// OpenOutput opens /code/output/name for download. Only regular files
// directly in the directory are served, never through a symlink.
func (s *Session) OpenOutput(name string) (*os.File, fs.FileInfo, error) {
	s.touch()
	if name == "" || name != filepath.Base(name) || name == "." || name == ".." {
		return nil, nil, codegw.Errorf(codegw.ENOTFOUND, "output file %q not found", name)
	}
	f, fi, err := safefs.OpenRegular(filepath.Join(s.k.Process().Dir(), "output"), name)
	if err != nil {
		return nil, nil, codegw.WrapError(codegw.ENOTFOUND, err, "output file %q not found", name)
	}
	return f, fi, nil
}
