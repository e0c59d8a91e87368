// Package snapshot carries a session's state past its kernel: the user
// namespace (serialized with dill inside the session's own kernel), the
// working directory, the environment, the execution count and the /code
// tree, compressed with zstd, checksummed and bound to the session's owner.
//
// Unpickling runs code, so a snapshot is only ever loaded by a sandboxed
// kernel of its owner (Restore); the gateway moves it as opaque bytes and
// parses nothing of it but the kernel's JSON report.
package snapshot

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/codegw/codegw"
)

// Kinds of snapshot.
const (
	KindPause      = "pause"      // taken when the session was paused
	KindCheckpoint = "checkpoint" // asked for by the client (POST .../checkpoint)
	KindAuto       = "auto"       // taken when the session went idle (CHECKPOINT_AFTER)
)

// Meta describes one stored snapshot. It is written next to the snapshot's
// bytes once they are whole.
type Meta struct {
	ID      string `json:"id"`
	Session string `json:"session"`
	// Owner is the key the session belongs to (as the session store keeps
	// it); only that key may read, restore or branch from it.
	Owner          string    `json:"owner"`
	Kind           string    `json:"kind"`
	TakenAt        time.Time `json:"taken_at"`
	SessionCreated time.Time `json:"session_created"`
	// Executions is how many executions the session had run.
	Executions int `json:"executions"`
	// Seq is the session's last event seq: a resumed session numbers its
	// events after it, so that clients reconnecting with last_seq see them.
	Seq         uint64               `json:"seq"`
	IdleTimeout time.Duration        `json:"idle_timeout"`
	Env         map[string]string    `json:"env,omitempty"`
	Variables   []string             `json:"variables"`
	Skipped     []codegw.SkippedName `json:"skipped"`
	// Bytes and SHA256 are those of the stored (compressed) bytes.
	Bytes  int64  `json:"bytes"`
	SHA256 string `json:"sha256"`
}

// Public is what clients see of m.
func (m Meta) Public() codegw.Snapshot {
	return codegw.Snapshot{ID: m.ID, Session: m.Session, Kind: m.Kind, TakenAt: m.TakenAt, Bytes: m.Bytes,
		Variables: nonNil(m.Variables), Skipped: nonNil(m.Skipped), Executions: m.Executions}
}

func nonNil[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}

// Store keeps snapshots. Dir is the one in this package (a directory, a
// shared volume when several instances run).
type Store interface {
	// Put stores the bytes of r under meta.ID (meta.Session, meta.ID and
	// meta.Owner are required) and returns meta with its size and checksum.
	Put(ctx context.Context, meta Meta, r io.Reader) (Meta, error)
	// Open returns a snapshot's meta and bytes; ENOTFOUND when missing.
	Open(ctx context.Context, session, id string) (Meta, io.ReadCloser, error)
	// List returns a session's snapshots, newest first.
	List(ctx context.Context, session string) ([]Meta, error)
	// Find returns the snapshot with the given id, of any session.
	Find(ctx context.Context, id string) (Meta, error)
	// Delete removes one snapshot; a missing one is not an error.
	Delete(ctx context.Context, session, id string) error
	// DeleteSession removes every snapshot of a session.
	DeleteSession(ctx context.Context, session string) error
	// Sessions lists the sessions that have snapshots.
	Sessions(ctx context.Context) ([]string, error)
	// Usage is the bytes owner's snapshots take.
	Usage(ctx context.Context, owner string) (int64, error)
	// SetProgress records how many executions a live session has run, so
	// that a resume from its last checkpoint after its instance died can
	// say how many were lost; Progress reads it (0 when never set).
	SetProgress(ctx context.Context, session string, executions int) error
	Progress(ctx context.Context, session string) (int, error)
}

// Dir stores each snapshot as <dir>/<session>/<id>.zst with its meta in
// <id>.json, written after the bytes (a snapshot without its meta is
// incomplete and never listed).
type Dir struct {
	dir string
	mu  sync.Mutex // serializes writers of one process; the files are atomic for others
}

// NewDir returns a store in dir, created if missing.
func NewDir(dir string) (*Dir, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	return &Dir{dir: dir}, nil
}

// validName keeps ids and session ids to single, safe path elements.
func validName(s string) bool {
	if s == "" || len(s) > 128 || s[0] == '.' {
		return false
	}
	for _, r := range s {
		if !(r == '_' || r == '-' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9') {
			return false
		}
	}
	return true
}

func notFound(id string) error {
	return codegw.Errorf(codegw.ENOTFOUND, "snapshot %q not found", id)
}

// Put implements Store.
func (d *Dir) Put(ctx context.Context, meta Meta, r io.Reader) (Meta, error) {
	if !validName(meta.Session) || !validName(meta.ID) || meta.Owner == "" {
		return Meta{}, codegw.Errorf(codegw.EINVALID, "snapshot: session, id and owner are required")
	}
	dir := filepath.Join(d.dir, meta.Session)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return Meta{}, codegw.WrapError(codegw.EUNAVAILABLE, err, "snapshot store unavailable")
	}
	tmp, err := os.CreateTemp(dir, ".put-*")
	if err != nil {
		return Meta{}, codegw.WrapError(codegw.EUNAVAILABLE, err, "snapshot store unavailable")
	}
	defer os.Remove(tmp.Name())
	h := sha256.New()
	// Not fsynced: a snapshot must survive the process (a restart, a
	// replaced container), and the rename below makes it whole or absent;
	// a crash of the host itself may lose the latest ones.
	n, err := io.Copy(io.MultiWriter(tmp, h), r)
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		if codegw.ErrorCode(err) != codegw.EINTERNAL {
			return Meta{}, err
		}
		return Meta{}, codegw.WrapError(codegw.EUNAVAILABLE, err, "snapshot store unavailable")
	}
	meta.Bytes, meta.SHA256 = n, hex.EncodeToString(h.Sum(nil))
	b, err := json.Marshal(meta)
	if err != nil {
		return Meta{}, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := os.Rename(tmp.Name(), filepath.Join(dir, meta.ID+".zst")); err != nil {
		return Meta{}, codegw.WrapError(codegw.EUNAVAILABLE, err, "snapshot store unavailable")
	}
	if err := writeAtomic(filepath.Join(dir, meta.ID+".json"), b); err != nil {
		os.Remove(filepath.Join(dir, meta.ID+".zst"))
		return Meta{}, codegw.WrapError(codegw.EUNAVAILABLE, err, "snapshot store unavailable")
	}
	return meta, nil
}

func writeAtomic(path string, b []byte) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// readMeta reads and checks one meta file.
func readMeta(path string) (Meta, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return Meta{}, err
	}
	return ParseMeta(b)
}

// ParseMeta decodes a stored meta, refusing one that names no session, id
// or owner.
func ParseMeta(b []byte) (Meta, error) {
	var m Meta
	if err := json.Unmarshal(b, &m); err != nil {
		return Meta{}, codegw.Errorf(codegw.EINVALID, "snapshot meta: %v", err)
	}
	if !validName(m.Session) || !validName(m.ID) || m.Owner == "" || m.Bytes < 0 {
		return Meta{}, codegw.Errorf(codegw.EINVALID, "snapshot meta: session, id, owner or size invalid")
	}
	return m, nil
}

// Open implements Store.
func (d *Dir) Open(ctx context.Context, session, id string) (Meta, io.ReadCloser, error) {
	if !validName(session) || !validName(id) {
		return Meta{}, nil, notFound(id)
	}
	m, err := readMeta(filepath.Join(d.dir, session, id+".json"))
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return Meta{}, nil, notFound(id)
		}
		return Meta{}, nil, codegw.WrapError(codegw.EINVALID, err, "snapshot %q is damaged", id)
	}
	f, err := os.Open(filepath.Join(d.dir, session, id+".zst"))
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return Meta{}, nil, codegw.Errorf(codegw.EINVALID, "snapshot %q is damaged: its bytes are missing", id)
		}
		return Meta{}, nil, codegw.WrapError(codegw.EUNAVAILABLE, err, "snapshot store unavailable")
	}
	return m, f, nil
}

// List implements Store.
func (d *Dir) List(ctx context.Context, session string) ([]Meta, error) {
	if !validName(session) {
		return nil, nil
	}
	paths, _ := filepath.Glob(filepath.Join(d.dir, session, "*.json"))
	var out []Meta
	for _, p := range paths {
		if m, err := readMeta(p); err == nil && m.Session == session {
			out = append(out, m)
		}
	}
	slices.SortFunc(out, func(a, b Meta) int { return cmp.Or(b.TakenAt.Compare(a.TakenAt), strings.Compare(b.ID, a.ID)) })
	return out, nil
}

// Find implements Store.
func (d *Dir) Find(ctx context.Context, id string) (Meta, error) {
	if !validName(id) {
		return Meta{}, notFound(id)
	}
	paths, _ := filepath.Glob(filepath.Join(d.dir, "*", id+".json"))
	for _, p := range paths {
		if m, err := readMeta(p); err == nil && m.ID == id {
			return m, nil
		}
	}
	return Meta{}, notFound(id)
}

// Delete implements Store.
func (d *Dir) Delete(ctx context.Context, session, id string) error {
	if !validName(session) || !validName(id) {
		return nil
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	os.Remove(filepath.Join(d.dir, session, id+".json"))
	os.Remove(filepath.Join(d.dir, session, id+".zst"))
	os.Remove(filepath.Join(d.dir, session)) // only when empty
	return nil
}

// DeleteSession implements Store.
func (d *Dir) DeleteSession(ctx context.Context, session string) error {
	if !validName(session) {
		return nil
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	return os.RemoveAll(filepath.Join(d.dir, session))
}

// Sessions implements Store.
func (d *Dir) Sessions(ctx context.Context) ([]string, error) {
	entries, err := os.ReadDir(d.dir)
	if err != nil {
		return nil, codegw.WrapError(codegw.EUNAVAILABLE, err, "snapshot store unavailable")
	}
	var out []string
	for _, e := range entries {
		if e.IsDir() && validName(e.Name()) {
			out = append(out, e.Name())
		}
	}
	return out, nil
}

// Usage implements Store.
func (d *Dir) Usage(ctx context.Context, owner string) (int64, error) {
	paths, _ := filepath.Glob(filepath.Join(d.dir, "*", "*.json"))
	var n int64
	for _, p := range paths {
		if m, err := readMeta(p); err == nil && m.Owner == owner {
			n += m.Bytes
		}
	}
	return n, nil
}

// SetProgress implements Store.
func (d *Dir) SetProgress(ctx context.Context, session string, executions int) error {
	if !validName(session) {
		return codegw.Errorf(codegw.EINVALID, "snapshot: invalid session id")
	}
	dir := filepath.Join(d.dir, session)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	// Each writer has its own temporary file: two instances may briefly
	// both write a session's progress around a resume.
	tmp, err := os.CreateTemp(dir, ".progress-*")
	if err != nil {
		return err
	}
	_, err = tmp.WriteString(strconv.Itoa(executions))
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), filepath.Join(dir, "progress"))
	}
	if err != nil {
		os.Remove(tmp.Name())
	}
	return err
}

// Progress implements Store.
func (d *Dir) Progress(ctx context.Context, session string) (int, error) {
	if !validName(session) {
		return 0, nil
	}
	b, err := os.ReadFile(filepath.Join(d.dir, session, "progress"))
	if errors.Is(err, fs.ErrNotExist) {
		return 0, nil
	} else if err != nil {
		return 0, err
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || n < 0 {
		return 0, codegw.Errorf(codegw.EINVALID, "snapshot: progress of %s is not a count", session)
	}
	return n, nil
}
