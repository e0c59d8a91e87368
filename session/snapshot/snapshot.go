package snapshot

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	_ "embed"

	"github.com/klauspost/compress/zstd"

	"github.com/codegw/codegw"
	"github.com/codegw/codegw/internal/strutil"
	"github.com/codegw/codegw/kernel"
)

//go:embed snapshot.py
var pyCode string

// The directories, under the kernel's /code, through which the kernel and
// the gateway hand each other a snapshot's parts. Neither is part of the
// /code tree a snapshot carries.
const (
	takeDir    = ".codegw-snapshot"
	restoreDir = ".codegw-restore"
)

// magic starts every snapshot's uncompressed stream; the parts follow in a
// fixed order (state.json, ns.bin, code.tar), each as a little-endian
// uint64 length and its bytes.
const magic = "codegw-snapshot/1\n"

var parts = []string{"state.json", "ns.bin", "code.tar"}

// kernelTimeout bounds the kernel's side of a snapshot or a restore.
const kernelTimeout = 5 * time.Minute

// report is what the kernel writes to report.json.
type report struct {
	Saved     []string             `json:"saved"`
	Skipped   []codegw.SkippedName `json:"skipped"`
	State     json.RawMessage      `json:"state"`
	OverLimit bool                 `json:"over_limit"`
}

// maxReport bounds report.json: names and reasons of a namespace, not data.
const maxReport = 16 << 20

// ParseReport decodes the kernel's report.json (hostile: the kernel runs
// the user's code).
func ParseReport(b []byte) (report, error) {
	var r report
	if len(b) > maxReport {
		return report{}, codegw.Errorf(codegw.EINTERNAL, "the kernel's snapshot report is over %d bytes", maxReport)
	}
	if err := json.Unmarshal(b, &r); err != nil {
		return report{}, codegw.Errorf(codegw.EINTERNAL, "the kernel's snapshot report is not valid: %v", err)
	}
	const maxName = 1 << 10
	for i := range r.Skipped {
		r.Skipped[i].Name = strutil.TruncateUTF8(r.Skipped[i].Name, maxName)
		r.Skipped[i].Reason = strutil.TruncateUTF8(r.Skipped[i].Reason, maxName)
	}
	for i := range r.Saved {
		r.Saved[i] = strutil.TruncateUTF8(r.Saved[i], maxName)
	}
	return r, nil
}

// run runs call after the snapshot code in k, silently, and reads the
// report the kernel left in dir (relative to /code).
func run(ctx context.Context, k *kernel.Kernel, call, dir string) (report, error) {
	code := pyCode + "\ntry:\n    " + call + "\nfinally:\n    del _codegw_snapshot, _codegw_restore\n"
	r, err := k.Execute(ctx, code, kernel.ExecuteOptions{Silent: true}, kernel.Deadline{Timeout: kernelTimeout})
	if err != nil {
		return report{}, codegw.WrapError(codegw.EUNAVAILABLE, err, "the kernel did not finish the snapshot")
	}
	if r.Status != "ok" {
		return report{}, codegw.Errorf(codegw.EINTERNAL, "the kernel failed the snapshot: %s: %s", r.EName, r.EValue)
	}
	root, err := os.OpenRoot(k.Process().Dir())
	if err != nil {
		return report{}, codegw.WrapError(codegw.EINTERNAL, err, "open the kernel's directory")
	}
	defer root.Close()
	f, err := root.Open(dir + "/report.json")
	if err != nil {
		return report{}, codegw.WrapError(codegw.EINTERNAL, err, "the kernel left no snapshot report")
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxReport+1))
	if err != nil {
		return report{}, codegw.WrapError(codegw.EINTERNAL, err, "read the snapshot report")
	}
	return ParseReport(b)
}

// Taken is a snapshot taken from a kernel, ready to be stored.
type Taken struct {
	Variables []string
	Skipped   []codegw.SkippedName
	// Write writes the compressed snapshot to w; it may be called once.
	// Its error is ETOOLARGE when the parts exceed the limit.
	Write func(w io.Writer) error
	// Close removes the kernel's copy of the parts.
	Close func()
}

// Take has k serialize its user namespace and /code tree, at most limit
// bytes before compression (ETOOLARGE over it). The parts stay in the
// kernel's directory until Taken.Close.
func Take(ctx context.Context, k *kernel.Kernel, limit int64) (*Taken, error) {
	rep, err := run(ctx, k, fmt.Sprintf("_codegw_snapshot(%q, %d)", "/code/"+takeDir, limit), takeDir)
	root, rerr := os.OpenRoot(k.Process().Dir())
	cleanup := func() {
		if rerr == nil {
			for _, p := range append(parts, "report.json") {
				root.Remove(takeDir + "/" + p)
			}
			root.Remove(takeDir)
			root.Close()
		}
	}
	if err == nil && rerr != nil {
		err = codegw.WrapError(codegw.EINTERNAL, rerr, "open the kernel's directory")
	}
	if err == nil && rep.OverLimit {
		err = codegw.Errorf(codegw.ETOOLARGE, "the session's state is over the snapshot limit of %d bytes (MAX_SNAPSHOT_BYTES)", limit)
	}
	if err == nil && len(rep.State) == 0 {
		err = codegw.Errorf(codegw.EINTERNAL, "the kernel's snapshot report has no state")
	}
	if err != nil {
		cleanup()
		return nil, err
	}
	write := func(w io.Writer) error {
		zw, err := zstd.NewWriter(w, zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderConcurrency(1))
		if err != nil {
			return err
		}
		bw := bufio.NewWriterSize(zw, 1<<20)
		if _, err := bw.WriteString(magic); err != nil {
			zw.Close()
			return err
		}
		var total int64
		for _, name := range parts {
			var r io.Reader
			var size int64
			if name == "state.json" {
				r, size = bytes.NewReader(rep.State), int64(len(rep.State))
			} else {
				f, err := root.Open(takeDir + "/" + name)
				if err != nil {
					zw.Close()
					return codegw.WrapError(codegw.EINTERNAL, err, "the kernel left no %s", name)
				}
				defer f.Close()
				st, err := f.Stat()
				if err != nil || !st.Mode().IsRegular() {
					zw.Close()
					return codegw.Errorf(codegw.EINTERNAL, "the kernel's %s is not a regular file", name)
				}
				r, size = f, st.Size()
			}
			if total += size; total > limit {
				zw.Close()
				return codegw.Errorf(codegw.ETOOLARGE, "the session's state is over the snapshot limit of %d bytes (MAX_SNAPSHOT_BYTES)", limit)
			}
			var n [8]byte
			binary.LittleEndian.PutUint64(n[:], uint64(size))
			bw.Write(n[:])
			if c, err := io.CopyN(bw, r, size); err != nil {
				zw.Close()
				return codegw.WrapError(codegw.EINTERNAL, err, "read the kernel's %s (%d of %d bytes)", name, c, size)
			}
		}
		if err := bw.Flush(); err != nil {
			zw.Close()
			return err
		}
		return zw.Close()
	}
	return &Taken{Variables: rep.Saved, Skipped: rep.Skipped, Write: write, Close: cleanup}, nil
}

// Timing, when set (benchmarks), receives the two halves of each restore:
// the gateway's (check and unpack into the kernel's directory) and the
// kernel's (load).
var Timing func(id string, unpack, load time.Duration)

// ErrDamaged is matched by the error of a snapshot whose bytes do not
// match its checksum or format.
var ErrDamaged = errors.New("snapshot damaged")

func damaged(id, why string) error {
	return codegw.WrapError(codegw.EINVALID, ErrDamaged, "snapshot %s is damaged (%s); the session stays paused", id, why)
}

// Restore loads the snapshot (meta, r) into k, a fresh kernel of the
// snapshot's owner: the bytes are checked against meta's checksum and
// written to the kernel's directory before the kernel loads any of them.
// limit bounds the uncompressed size.
func Restore(ctx context.Context, k *kernel.Kernel, meta Meta, r io.Reader, limit int64) (*codegw.Restored, error) {
	start := time.Now()
	root, err := os.OpenRoot(k.Process().Dir())
	if err != nil {
		return nil, codegw.WrapError(codegw.EINTERNAL, err, "open the kernel's directory")
	}
	defer root.Close()
	if err := root.Mkdir(restoreDir, 0o777); err != nil && !errors.Is(err, os.ErrExist) {
		return nil, codegw.WrapError(codegw.EINTERNAL, err, "prepare the restore")
	}
	defer func() {
		for _, p := range append(parts, "report.json") {
			root.Remove(restoreDir + "/" + p)
		}
		root.Remove(restoreDir)
	}()
	// Mkdir's mode is masked by the umask; the kernel runs as another user.
	if f, err := root.Open(restoreDir); err == nil {
		f.Chmod(0o777)
		f.Close()
	}
	h := sha256.New()
	n, err := Unpack(io.TeeReader(r, h), limit, func(name string, size int64, body io.Reader) error {
		f, err := root.OpenFile(restoreDir+"/"+name, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
		if err != nil {
			return codegw.WrapError(codegw.EINTERNAL, err, "write %s for the kernel", name)
		}
		defer f.Close()
		_, err = io.CopyN(f, body, size)
		return err
	})
	if err != nil {
		if errors.Is(err, ErrDamaged) {
			return nil, damaged(meta.ID, codegw.ErrorMessage(err))
		}
		return nil, err
	}
	// Whatever follows the stream is read too: the checksum covers it all.
	rest, _ := io.Copy(h, r)
	if got := hex.EncodeToString(h.Sum(nil)); got != meta.SHA256 || n+rest != meta.Bytes {
		return nil, damaged(meta.ID, "its checksum does not match")
	}
	unpacked := time.Since(start)
	rep, err := run(ctx, k, fmt.Sprintf("_codegw_restore(%q)", "/code/"+restoreDir), restoreDir)
	if err != nil {
		return nil, err
	}
	if Timing != nil {
		Timing(meta.ID, unpacked, time.Since(start)-unpacked)
	}
	return &codegw.Restored{
		Snapshot: meta.ID, Kind: meta.Kind, TakenAt: meta.TakenAt,
		Variables: nonNil(rep.Saved), Skipped: append(nonNil(meta.Skipped), rep.Skipped...), Executions: meta.Executions,
	}, nil
}

// countingReader counts the compressed bytes read.
type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

// Unpack decodes a compressed snapshot from r, calling part for each of its
// parts in order with the part's size and a reader of exactly that many
// bytes. It returns how many compressed bytes it read. A stream that is not
// a snapshot, is cut short or holds more than limit bytes is refused
// (ErrDamaged, or ETOOLARGE).
func Unpack(r io.Reader, limit int64, part func(name string, size int64, body io.Reader) error) (int64, error) {
	cr := &countingReader{r: r}
	zr, err := zstd.NewReader(cr, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxWindow(64<<20))
	if err != nil {
		return 0, err
	}
	defer zr.Close()
	br := bufio.NewReaderSize(zr, 1<<20)
	head := make([]byte, len(magic))
	if _, err := io.ReadFull(br, head); err != nil || string(head) != magic {
		return cr.n, fmt.Errorf("%w: not a codegw snapshot", ErrDamaged)
	}
	var total int64
	for _, name := range parts {
		var n [8]byte
		if _, err := io.ReadFull(br, n[:]); err != nil {
			return cr.n, fmt.Errorf("%w: cut short before %s", ErrDamaged, name)
		}
		size := binary.LittleEndian.Uint64(n[:])
		if size > uint64(limit) || total+int64(size) > limit {
			return cr.n, codegw.Errorf(codegw.ETOOLARGE, "snapshot is over the limit of %d bytes", limit)
		}
		total += int64(size)
		lr := &io.LimitedReader{R: br, N: int64(size)}
		if err := part(name, int64(size), lr); err != nil {
			if lr.N > 0 {
				return cr.n, fmt.Errorf("%w: cut short in %s (%s)", ErrDamaged, name, err)
			}
			return cr.n, err
		}
		if lr.N > 0 {
			return cr.n, fmt.Errorf("%w: cut short in %s", ErrDamaged, name)
		}
	}
	if _, err := br.ReadByte(); err != io.EOF {
		if err == nil {
			return cr.n, fmt.Errorf("%w: bytes after its last part", ErrDamaged)
		}
		return cr.n, fmt.Errorf("%w: %v", ErrDamaged, err)
	}
	return cr.n, nil
}

// NewID returns a new snapshot id.
func NewID() string { return "ck_" + codegw.NewID()[:24] }
