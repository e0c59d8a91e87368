package snapshot

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"net/url"
	"path"
	"slices"
	"strconv"
	"strings"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"

	"github.com/codegw/codegw"
)

// S3Config locates a bucket of an S3-compatible object store.
type S3Config struct {
	// Endpoint is host:port or a URL (http:// means no TLS).
	Endpoint string
	Bucket   string
	// Prefix is prepended to every key ("codegw/" keeps the bucket
	// shared).
	Prefix               string
	Region               string
	AccessKey, SecretKey string
}

// S3 stores snapshots in an S3-compatible object store, shared by every
// instance. Keys:
//
//	<prefix>data/<owner hash>/<session>/<id>.zst   the bytes (listing an owner's sizes is its usage)
//	<prefix>meta/<session>/<id>.json              the meta, written after the bytes
//	<prefix>ids/<id>                              the session of a snapshot id (Find)
//	<prefix>progress/<session>                    the executions count (SetProgress)
type S3 struct {
	c      *minio.Client
	bucket string
	prefix string
}

// NewS3 connects to the bucket, which must exist.
func NewS3(ctx context.Context, cfg S3Config) (*S3, error) {
	host, secure := cfg.Endpoint, true
	if u, err := url.Parse(cfg.Endpoint); err == nil && u.Host != "" {
		host, secure = u.Host, u.Scheme == "https"
	}
	c, err := minio.New(host, &minio.Options{
		Creds:  credentials.NewStaticV4(cfg.AccessKey, cfg.SecretKey, ""),
		Secure: secure, Region: cfg.Region,
	})
	if err != nil {
		return nil, err
	}
	ok, err := c.BucketExists(ctx, cfg.Bucket)
	if err != nil {
		return nil, s3Unavailable(err)
	}
	if !ok {
		return nil, codegw.Errorf(codegw.EINVALID, "snapshot store: bucket %q does not exist", cfg.Bucket)
	}
	return &S3{c: c, bucket: cfg.Bucket, prefix: cfg.Prefix}, nil
}

func s3Unavailable(err error) error {
	return codegw.WrapError(codegw.EUNAVAILABLE, err, "snapshot store unavailable")
}

func s3Missing(err error) bool {
	return minio.ToErrorResponse(err).Code == "NoSuchKey" || minio.ToErrorResponse(err).StatusCode == 404
}

func ownerHash(owner string) string {
	h := sha256.Sum256([]byte(owner))
	return hex.EncodeToString(h[:12])
}

func (s *S3) dataKey(m Meta) string {
	return s.prefix + "data/" + ownerHash(m.Owner) + "/" + m.Session + "/" + m.ID + ".zst"
}
func (s *S3) metaKey(session, id string) string {
	return s.prefix + "meta/" + session + "/" + id + ".json"
}

func (s *S3) put(ctx context.Context, key string, b []byte) error {
	_, err := s.c.PutObject(ctx, s.bucket, key, bytes.NewReader(b), int64(len(b)), minio.PutObjectOptions{ContentType: "application/json"})
	return err
}

func (s *S3) get(ctx context.Context, key string, limit int64) ([]byte, error) {
	o, err := s.c.GetObject(ctx, s.bucket, key, minio.GetObjectOptions{})
	if err != nil {
		return nil, err
	}
	defer o.Close()
	return io.ReadAll(io.LimitReader(o, limit))
}

// Put implements Store.
func (s *S3) Put(ctx context.Context, meta Meta, r io.Reader) (Meta, error) {
	if !validName(meta.Session) || !validName(meta.ID) || meta.Owner == "" {
		return Meta{}, codegw.Errorf(codegw.EINVALID, "snapshot: session, id and owner are required")
	}
	h := sha256.New()
	cr := &countingReader{r: io.TeeReader(r, h)}
	_, err := s.c.PutObject(ctx, s.bucket, s.dataKey(meta), cr, -1, minio.PutObjectOptions{ContentType: "application/zstd", PartSize: 16 << 20})
	if err != nil {
		s.c.RemoveObject(context.WithoutCancel(ctx), s.bucket, s.dataKey(meta), minio.RemoveObjectOptions{})
		var ce *codegw.Error
		if errors.As(err, &ce) {
			return Meta{}, ce
		}
		return Meta{}, s3Unavailable(err)
	}
	meta.Bytes, meta.SHA256 = cr.n, hex.EncodeToString(h.Sum(nil))
	b, err := json.Marshal(meta)
	if err == nil {
		err = s.put(ctx, s.prefix+"ids/"+meta.ID, []byte(meta.Session))
	}
	if err == nil {
		err = s.put(ctx, s.metaKey(meta.Session, meta.ID), b)
	}
	if err != nil {
		s.Delete(context.WithoutCancel(ctx), meta.Session, meta.ID)
		return Meta{}, s3Unavailable(err)
	}
	return meta, nil
}

func (s *S3) readMeta(ctx context.Context, session, id string) (Meta, error) {
	b, err := s.get(ctx, s.metaKey(session, id), 16<<20)
	if err != nil {
		if s3Missing(err) {
			return Meta{}, notFound(id)
		}
		return Meta{}, s3Unavailable(err)
	}
	m, err := ParseMeta(b)
	if err != nil {
		return Meta{}, codegw.WrapError(codegw.EINVALID, err, "snapshot %q is damaged", id)
	}
	if m.Session != session || m.ID != id {
		return Meta{}, codegw.Errorf(codegw.EINVALID, "snapshot %q is damaged: its meta names another", id)
	}
	return m, nil
}

// Open implements Store.
func (s *S3) Open(ctx context.Context, session, id string) (Meta, io.ReadCloser, error) {
	if !validName(session) || !validName(id) {
		return Meta{}, nil, notFound(id)
	}
	m, err := s.readMeta(ctx, session, id)
	if err != nil {
		return Meta{}, nil, err
	}
	o, err := s.c.GetObject(ctx, s.bucket, s.dataKey(m), minio.GetObjectOptions{})
	if err != nil {
		return Meta{}, nil, s3Unavailable(err)
	}
	if _, err := o.Stat(); err != nil {
		o.Close()
		if s3Missing(err) {
			return Meta{}, nil, codegw.Errorf(codegw.EINVALID, "snapshot %q is damaged: its bytes are missing", id)
		}
		return Meta{}, nil, s3Unavailable(err)
	}
	return m, o, nil
}

// List implements Store.
func (s *S3) List(ctx context.Context, session string) ([]Meta, error) {
	if !validName(session) {
		return nil, nil
	}
	var out []Meta
	for o := range s.c.ListObjects(ctx, s.bucket, minio.ListObjectsOptions{Prefix: s.prefix + "meta/" + session + "/", Recursive: true}) {
		if o.Err != nil {
			return nil, s3Unavailable(o.Err)
		}
		id, ok := strings.CutSuffix(path.Base(o.Key), ".json")
		if !ok {
			continue
		}
		if m, err := s.readMeta(ctx, session, id); err == nil {
			out = append(out, m)
		}
	}
	slices.SortFunc(out, func(a, b Meta) int {
		if c := b.TakenAt.Compare(a.TakenAt); c != 0 {
			return c
		}
		return strings.Compare(b.ID, a.ID)
	})
	return out, nil
}

// Find implements Store.
func (s *S3) Find(ctx context.Context, id string) (Meta, error) {
	if !validName(id) {
		return Meta{}, notFound(id)
	}
	b, err := s.get(ctx, s.prefix+"ids/"+id, 256)
	if err != nil {
		if s3Missing(err) {
			return Meta{}, notFound(id)
		}
		return Meta{}, s3Unavailable(err)
	}
	return s.readMeta(ctx, string(b), id)
}

// Delete implements Store.
func (s *S3) Delete(ctx context.Context, session, id string) error {
	if !validName(session) || !validName(id) {
		return nil
	}
	if m, err := s.readMeta(ctx, session, id); err == nil {
		s.c.RemoveObject(ctx, s.bucket, s.dataKey(m), minio.RemoveObjectOptions{})
	}
	s.c.RemoveObject(ctx, s.bucket, s.metaKey(session, id), minio.RemoveObjectOptions{})
	s.c.RemoveObject(ctx, s.bucket, s.prefix+"ids/"+id, minio.RemoveObjectOptions{})
	return nil
}

// DeleteSession implements Store.
func (s *S3) DeleteSession(ctx context.Context, session string) error {
	list, err := s.List(ctx, session)
	if err != nil {
		return err
	}
	for _, m := range list {
		s.Delete(ctx, session, m.ID)
	}
	s.c.RemoveObject(ctx, s.bucket, s.prefix+"progress/"+session, minio.RemoveObjectOptions{})
	return nil
}

// Sessions implements Store.
func (s *S3) Sessions(ctx context.Context) ([]string, error) {
	var out []string
	for o := range s.c.ListObjects(ctx, s.bucket, minio.ListObjectsOptions{Prefix: s.prefix + "meta/"}) {
		if o.Err != nil {
			return nil, s3Unavailable(o.Err)
		}
		if name := path.Base(strings.TrimSuffix(o.Key, "/")); validName(name) {
			out = append(out, name)
		}
	}
	return out, nil
}

// Usage implements Store.
func (s *S3) Usage(ctx context.Context, owner string) (int64, error) {
	var n int64
	for o := range s.c.ListObjects(ctx, s.bucket, minio.ListObjectsOptions{Prefix: s.prefix + "data/" + ownerHash(owner) + "/", Recursive: true}) {
		if o.Err != nil {
			return 0, s3Unavailable(o.Err)
		}
		n += o.Size
	}
	return n, nil
}

// SetProgress implements Store.
func (s *S3) SetProgress(ctx context.Context, session string, executions int) error {
	if !validName(session) {
		return codegw.Errorf(codegw.EINVALID, "snapshot: invalid session id")
	}
	return s.put(ctx, s.prefix+"progress/"+session, []byte(strconv.Itoa(executions)))
}

// Progress implements Store.
func (s *S3) Progress(ctx context.Context, session string) (int, error) {
	if !validName(session) {
		return 0, nil
	}
	b, err := s.get(ctx, s.prefix+"progress/"+session, 32)
	if err != nil {
		if s3Missing(err) {
			return 0, nil
		}
		return 0, s3Unavailable(err)
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || n < 0 {
		return 0, codegw.Errorf(codegw.EINVALID, "snapshot: progress of %s is not a count", session)
	}
	return n, nil
}
