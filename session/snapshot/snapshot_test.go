package snapshot

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"

	"github.com/codegw/codegw"
	"github.com/codegw/codegw/session/snapshot/snaptest"
)

// pack builds a snapshot stream as Taken.Write does, from the given parts.
func pack(t testing.TB, parts ...[]byte) []byte {
	var raw bytes.Buffer
	raw.WriteString(magic)
	for _, p := range parts {
		var n [8]byte
		binary.LittleEndian.PutUint64(n[:], uint64(len(p)))
		raw.Write(n[:])
		raw.Write(p)
	}
	var out bytes.Buffer
	zw, err := zstd.NewWriter(&out)
	if err != nil {
		t.Fatal(err)
	}
	zw.Write(raw.Bytes())
	zw.Close()
	return out.Bytes()
}

func TestUnpack(t *testing.T) {
	good := pack(t, []byte(`{"cwd":"/code"}`), []byte("namespace"), []byte("tar"))
	got := map[string]string{}
	n, err := Unpack(bytes.NewReader(good), 1<<20, func(name string, size int64, r io.Reader) error {
		b, err := io.ReadAll(r)
		got[name] = string(b)
		return err
	})
	if err != nil || n != int64(len(good)) || got["ns.bin"] != "namespace" || got["code.tar"] != "tar" {
		t.Fatalf("Unpack = %d %v %v", n, err, got)
	}
	discard := func(string, int64, io.Reader) error { return nil }
	for name, b := range map[string][]byte{
		"not zstd":     []byte("hello"),
		"bad magic":    pack(t)[:0],
		"cut short":    good[:len(good)/2],
		"missing part": pack(t, []byte("{}"), []byte("ns")),
		"extra bytes":  pack(t, []byte("{}"), []byte("ns"), []byte("tar"), []byte("more")),
	} {
		if _, err := Unpack(bytes.NewReader(b), 1<<20, discard); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if _, err := Unpack(bytes.NewReader(good), 8, discard); codegw.ErrorCode(err) != codegw.ETOOLARGE {
		t.Errorf("over the limit: %v", err)
	}
}

func TestDirStore(t *testing.T) {
	d, err := NewDir(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	storeSuite(t, d)
}

// TestS3Store runs the same suite against a real S3-compatible server
// (scripts/s3-up.sh starts SeaweedFS and exports CODEGW_S3_ENDPOINT);
// under CI=true a missing server fails the test.
func TestS3Store(t *testing.T) {
	c := snaptest.S3(t)
	st, err := NewS3(context.Background(), S3Config{Endpoint: c.Endpoint, Bucket: c.Bucket, Prefix: c.Prefix, Region: c.Region, AccessKey: c.AccessKey, SecretKey: c.SecretKey})
	if err != nil {
		t.Fatal(err)
	}
	storeSuite(t, st)
	// Another prefix in the same bucket sees nothing of this one.
	ctx := context.Background()
	if _, err := st.Put(ctx, Meta{ID: NewID(), Session: "s_p", Owner: "kp", TakenAt: time.Now()}, strings.NewReader("x")); err != nil {
		t.Fatal(err)
	}
	other := *st
	other.prefix = st.prefix + "other/"
	if ids, _ := other.Sessions(ctx); len(ids) != 0 {
		t.Errorf("another prefix lists %v", ids)
	}
}

// storeSuite is what every Store must do.
func storeSuite(t *testing.T, d Store) {
	ctx := context.Background()
	now := time.Now().UTC()
	a1, err := d.Put(ctx, Meta{ID: NewID(), Session: "s_a", Owner: "ka", Kind: KindPause, TakenAt: now}, strings.NewReader("one"))
	if err != nil || a1.Bytes != 3 || len(a1.SHA256) != 64 {
		t.Fatalf("put: %+v %v", a1, err)
	}
	a2, _ := d.Put(ctx, Meta{ID: NewID(), Session: "s_a", Owner: "ka", Kind: KindCheckpoint, TakenAt: now.Add(time.Second)}, strings.NewReader("two!"))
	d.Put(ctx, Meta{ID: NewID(), Session: "s_b", Owner: "kb", Kind: KindPause, TakenAt: now}, strings.NewReader("bbbbb"))
	list, _ := d.List(ctx, "s_a")
	if len(list) != 2 || list[0].ID != a2.ID {
		t.Errorf("list newest first: %+v", list)
	}
	if m, err := d.Find(ctx, a1.ID); err != nil || m.Session != "s_a" {
		t.Errorf("find: %+v %v", m, err)
	}
	if n, _ := d.Usage(ctx, "ka"); n != 7 {
		t.Errorf("usage of ka = %d, want 7", n)
	}
	if _, _, err := d.Open(ctx, "s_a", "../s_b"); codegw.ErrorCode(err) != codegw.ENOTFOUND {
		t.Errorf("a path in an id: %v", err)
	}
	if _, err := d.Put(ctx, Meta{ID: "../x", Session: "s_a", Owner: "ka"}, strings.NewReader("")); err == nil {
		t.Error("put with a path id accepted")
	}
	// A failing reader leaves nothing behind.
	if _, err := d.Put(ctx, Meta{ID: NewID(), Session: "s_c", Owner: "kc"}, io.MultiReader(strings.NewReader("x"), errReader{})); err == nil {
		t.Error("a failed write was stored")
	}
	if l, _ := d.List(ctx, "s_c"); len(l) != 0 {
		t.Errorf("failed write listed: %+v", l)
	}
	// The bytes come back as they went in, with the meta that Put wrote.
	m, rc, err := d.Open(ctx, "s_a", a2.ID)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(rc)
	rc.Close()
	if string(b) != "two!" || m.SHA256 != a2.SHA256 || m.Owner != "ka" {
		t.Errorf("open: %q %+v", b, m)
	}
	if ids, _ := d.Sessions(ctx); !slices.Contains(ids, "s_a") || !slices.Contains(ids, "s_b") {
		t.Errorf("sessions: %v", ids)
	}
	if n, _ := d.Progress(ctx, "s_a"); n != 0 {
		t.Errorf("progress never set: %d", n)
	}
	d.SetProgress(ctx, "s_a", 7)
	if n, err := d.Progress(ctx, "s_a"); n != 7 || err != nil {
		t.Errorf("progress: %d %v", n, err)
	}
	d.Delete(ctx, "s_a", a1.ID)
	if l, _ := d.List(ctx, "s_a"); len(l) != 1 || l[0].ID != a2.ID {
		t.Errorf("after delete: %+v", l)
	}
	d.DeleteSession(ctx, "s_a")
	if l, _ := d.List(ctx, "s_a"); len(l) != 0 {
		t.Errorf("after delete session: %+v", l)
	}
	if _, err := d.Find(ctx, a2.ID); codegw.ErrorCode(err) != codegw.ENOTFOUND {
		t.Errorf("deleted snapshot found: %v", err)
	}
	if n, _ := d.Usage(ctx, "ka"); n != 0 {
		t.Errorf("usage after delete: %d", n)
	}
	d.DeleteSession(ctx, "s_b")
}

type errReader struct{}

func (errReader) Read([]byte) (int, error) { return 0, errors.New("disk on fire") }

// FuzzUnpack: a stored snapshot's bytes are untrusted (a shared volume, an
// object store); decoding them ends with an error, never a panic or an
// unbounded allocation.
func FuzzUnpack(f *testing.F) {
	f.Add(pack(f, []byte("{}"), []byte("ns"), []byte("tar")))
	f.Add(pack(f, []byte("{}")))
	f.Add([]byte(magic))
	f.Fuzz(func(t *testing.T, b []byte) {
		var total int64
		Unpack(bytes.NewReader(b), 1<<20, func(name string, size int64, r io.Reader) error {
			if size > 1<<20 {
				t.Fatalf("part %s of %d bytes passed the limit", name, size)
			}
			n, err := io.Copy(io.Discard, r)
			total += n
			return err
		})
		if total > 1<<20 {
			t.Fatalf("%d bytes decoded past the limit", total)
		}
	})
}

// FuzzParseReport: the kernel's report is written by code the user
// controls.
func FuzzParseReport(f *testing.F) {
	f.Add([]byte(`{"saved":["x","df"],"skipped":[{"name":"fh","reason":"an open file"}],"state":{"cwd":"/code"},"over_limit":false}`))
	f.Add([]byte(`{"saved":null,"state":null}`))
	f.Add([]byte(`[]`))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := ParseReport(b)
		if err != nil {
			return
		}
		for _, s := range r.Skipped {
			if len(s.Name) > 1<<10 || len(s.Reason) > 1<<10 {
				t.Fatalf("unbounded skip entry: %d %d", len(s.Name), len(s.Reason))
			}
		}
	})
}

// FuzzParseMeta: a meta file on a shared volume is untrusted too.
func FuzzParseMeta(f *testing.F) {
	f.Add([]byte(`{"id":"ck_abc","session":"s_x","owner":"k","kind":"pause","bytes":3,"sha256":"00"}`))
	f.Add([]byte(`{"id":"../x","session":"s_x","owner":"k"}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := ParseMeta(b)
		if err == nil && (!validName(m.ID) || !validName(m.Session) || m.Owner == "") {
			t.Fatalf("accepted %+v", m)
		}
	})
}
