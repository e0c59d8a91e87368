package inputs

import (
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/codegw/codegw"

	"github.com/codegw/codegw/internal/testcheck"
)

// newTestFetcher returns a Fetcher that admits only 127.0.0.1, where the
// test servers listen.
func newTestFetcher(t *testing.T, lim FetchLimits) *Fetcher {
	t.Helper()
	if lim.AllowCIDRs == nil && lim.AllowHosts == nil {
		lim.AllowCIDRs = []string{"127.0.0.1/32"}
	}
	f, err := NewFetcher(lim)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// fileServer serves a few fixed routes used by the fetch tests.
func fileServer(t *testing.T) *httptest.Server {
	t.Helper()
	mux := http.NewServeMux()
	mux.HandleFunc("/data.csv", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, "a,b\n1,2\n")
	})
	mux.HandleFunc("/echo", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, r.URL.RawQuery)
	})
	mux.HandleFunc("/disposition", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Disposition", r.URL.Query().Get("cd"))
		fmt.Fprint(w, "x")
	})
	mux.HandleFunc("/dir/", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, "index")
	})
	mux.HandleFunc("/missing", func(w http.ResponseWriter, r *http.Request) {
		http.NotFound(w, r)
	})
	mux.HandleFunc("/bytes", func(w http.ResponseWriter, r *http.Request) {
		// n bytes, streamed without a Content-Length unless cl=1.
		var n int
		fmt.Sscan(r.URL.Query().Get("n"), &n)
		if r.URL.Query().Get("cl") == "1" {
			w.Header().Set("Content-Length", fmt.Sprint(n))
		}
		chunk := []byte(strings.Repeat("x", 512))
		for n > 0 {
			k := min(n, len(chunk))
			if _, err := w.Write(chunk[:k]); err != nil {
				return
			}
			w.(http.Flusher).Flush()
			n -= k
		}
	})
	mux.HandleFunc("/redirect", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, r.URL.Query().Get("to"), http.StatusFound)
	})
	mux.HandleFunc("/loop", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "/loop", http.StatusFound)
	})
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return srv
}

func TestFetchNaming(t *testing.T) {
	srv := fileServer(t)
	f := newTestFetcher(t, FetchLimits{})
	tests := []struct {
		name, path, want string
	}{
		{"path segment", "/data.csv", "data.csv"},
		{"query filename", "/echo?filename=q1.csv&file_name=no&name=no&file=no", "q1.csv"},
		{"query file_name", "/echo?file_name=q2.csv&name=no&file=no", "q2.csv"},
		{"query name", "/echo?name=q3.csv&file=no", "q3.csv"},
		{"query file", "/echo?file=q4.csv", "q4.csv"},
		{"query beats disposition", "/disposition?name=q.csv&cd=" + escape(`attachment; filename="cd.csv"`), "q.csv"},
		{"disposition", "/disposition?cd=" + escape(`attachment; filename="cd.csv"`), "cd.csv"},
		{"disposition filename*", "/disposition?cd=" + escape(`attachment; filename="x.csv"; filename*=UTF-8''%E6%95%B0%E6%8D%AE.csv`), "数据.csv"},
		{"disposition sanitised", "/disposition?cd=" + escape(`attachment; filename="../../etc/cron.d/evil"`), "evil"},
		{"query sanitised", "/echo?filename=..%2F..%2Fetc%2Fpasswd", "passwd"},
		{"path when no disposition name", "/disposition?cd=inline", "disposition"},
		{"fallback file_n", "/dir/", "file_1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "input")
			u := srv.URL + tt.path
			_, inputs, err := f.Fetch(context.Background(), []string{u}, "", dir)
			if err != nil {
				t.Fatal(err)
			}
			in := inputs[0]
			if in.LocalName != tt.want || in.OriginalName != tt.want {
				t.Errorf("local, original = %q, %q; want %q", in.LocalName, in.OriginalName, tt.want)
			}
			if in.LocalPath != "/code/input/"+tt.want {
				t.Errorf("LocalPath = %q", in.LocalPath)
			}
			if in.URL != u {
				t.Errorf("URL = %q, want %q", in.URL, u)
			}
			fi, err := os.Stat(filepath.Join(dir, tt.want))
			if err != nil {
				t.Fatal(err)
			}
			if fi.Size() != in.SizeBytes {
				t.Errorf("size on disk %d, reported %d", fi.Size(), in.SizeBytes)
			}
			if got := testcheck.DirNames(t, dir); len(got) != 1 {
				t.Errorf("input dir holds %v, want just %s", got, tt.want)
			}
		})
	}
}

func escape(s string) string {
	r := strings.NewReplacer("%", "%25", " ", "%20", "&", "%26", "=", "%3D", ";", "%3B", `"`, "%22", "'", "%27", "+", "%2B", "/", "%2F")
	return r.Replace(s)
}

func TestFetchCollisionsAndReplacement(t *testing.T) {
	srv := fileServer(t)
	f := newTestFetcher(t, FetchLimits{})
	dir := t.TempDir()
	u1 := srv.URL + "/data.csv"
	u2 := srv.URL + "/echo?filename=data.csv"
	u3 := srv.URL + "/echo?filename=data.csv&v=2" // u2 is a prefix of u3
	u4 := srv.URL + "/echo?filename=other.txt"
	code := fmt.Sprintf("a = read(%q)\nb = read(%q)\nc = read(%q)\nd = read(%q)\ne = read(%q)\n", u1, u2, u3, u4, u1)
	got, inputs, err := f.Fetch(context.Background(), []string{u1, u2, u3, u4}, code, dir)
	if err != nil {
		t.Fatal(err)
	}
	want := "a = read(\"/code/input/data.csv\")\nb = read(\"/code/input/2_data.csv\")\nc = read(\"/code/input/3_data.csv\")\nd = read(\"/code/input/other.txt\")\ne = read(\"/code/input/data.csv\")\n"
	if got != want {
		t.Errorf("code:\n%s\nwant:\n%s", got, want)
	}
	var locals []string
	for _, in := range inputs {
		locals = append(locals, in.LocalName)
		if in.OriginalName != strings.TrimPrefix(strings.TrimPrefix(in.LocalName, "2_"), "3_") {
			t.Errorf("OriginalName %q for %q", in.OriginalName, in.LocalName)
		}
	}
	if w := "data.csv 2_data.csv 3_data.csv other.txt"; strings.Join(locals, " ") != w {
		t.Errorf("local names %v, want %s", locals, w)
	}
	if w := "2_data.csv 3_data.csv data.csv other.txt"; strings.Join(testcheck.DirNames(t, dir), " ") != w {
		t.Errorf("dir holds %v, want %s", testcheck.DirNames(t, dir), w)
	}
	b, _ := os.ReadFile(filepath.Join(dir, "3_data.csv"))
	if string(b) != "filename=data.csv&v=2" {
		t.Errorf("3_data.csv holds %q", b)
	}
}

func TestFetchNoURLs(t *testing.T) {
	f := newTestFetcher(t, FetchLimits{})
	dir := filepath.Join(t.TempDir(), "input")
	code, inputs, err := f.Fetch(context.Background(), nil, "print(1)", dir)
	if err != nil || code != "print(1)" || inputs == nil || len(inputs) != 0 {
		t.Fatalf("Fetch(nil) = %q, %v, %v", code, inputs, err)
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("input dir created without inputs: %v", err)
	}
}

func TestFetchReplacesExistingFileAndSymlink(t *testing.T) {
	srv := fileServer(t)
	f := newTestFetcher(t, FetchLimits{})
	dir := t.TempDir()
	outside := filepath.Join(t.TempDir(), "victim")
	if err := os.WriteFile(outside, []byte("precious"), 0o644); err != nil {
		t.Fatal(err)
	}
	// A kernel planted a symlink where the input will go.
	if err := os.Symlink(outside, filepath.Join(dir, "data.csv")); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "other.txt"), []byte("old"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, _, err := f.Fetch(context.Background(), []string{srv.URL + "/data.csv", srv.URL + "/echo?name=other.txt&new"}, "", dir)
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(outside); string(b) != "precious" {
		t.Errorf("write went through the symlink: victim holds %q", b)
	}
	fi, err := os.Lstat(filepath.Join(dir, "data.csv"))
	if err != nil || !fi.Mode().IsRegular() {
		t.Errorf("data.csv is not a regular file: %v %v", fi, err)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "other.txt")); string(b) != "name=other.txt&new" {
		t.Errorf("other.txt holds %q, want the new download", b)
	}
}

func TestFetchInputDirSymlinkRefused(t *testing.T) {
	srv := fileServer(t)
	f := newTestFetcher(t, FetchLimits{})
	base := t.TempDir()
	elsewhere := t.TempDir()
	if err := os.Symlink(elsewhere, filepath.Join(base, "input")); err != nil {
		t.Fatal(err)
	}
	_, _, err := f.Fetch(context.Background(), []string{srv.URL + "/data.csv"}, "", filepath.Join(base, "input"))
	if err == nil {
		t.Fatal("Fetch wrote through a symlinked input dir")
	}
	if got := testcheck.DirNames(t, elsewhere); len(got) != 0 {
		t.Errorf("files written through the symlink: %v", got)
	}
}

func TestFetchLimits(t *testing.T) {
	srv := fileServer(t)
	f := newTestFetcher(t, FetchLimits{MaxFiles: 3, MaxFileBytes: 1000, MaxTotalBytes: 1500})
	tests := []struct {
		name  string
		urls  []string
		code  string
		parts []string
	}{
		{
			"streamed body over the per-file limit",
			[]string{srv.URL + "/bytes?n=5000"},
			codegw.ETOOLARGE, []string{srv.URL + "/bytes?n=5000", "1000 bytes"},
		},
		{
			"announced length over the per-file limit",
			[]string{srv.URL + "/bytes?n=5000&cl=1"},
			codegw.ETOOLARGE, []string{srv.URL + "/bytes?n=5000&cl=1", "5000 bytes"},
		},
		{
			"total over the limit, earlier file removed",
			[]string{srv.URL + "/bytes?n=1000", srv.URL + "/bytes?n=600"},
			codegw.ETOOLARGE, []string{srv.URL + "/bytes?n=600", "total limit of 1500 bytes"},
		},
		{
			"too many files",
			[]string{srv.URL + "/data.csv", srv.URL + "/data.csv", srv.URL + "/data.csv", srv.URL + "/data.csv"},
			codegw.ETOOLARGE, []string{"too many input files: 4", "limit is 3"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			code, inputs, err := f.Fetch(context.Background(), tt.urls, "x", dir)
			testcheck.WantCode(t, err, tt.code, tt.parts...)
			if inputs != nil || code != "x" {
				t.Errorf("on error got code %q, inputs %v", code, inputs)
			}
			if got := testcheck.DirNames(t, dir); len(got) != 0 {
				t.Errorf("input dir not cleaned: %v", got)
			}
		})
	}
	// Exactly at the limits is fine.
	dir := t.TempDir()
	_, inputs, err := f.Fetch(context.Background(), []string{srv.URL + "/bytes?n=1000", srv.URL + "/bytes?n=500&cl=1"}, "", dir)
	if err != nil {
		t.Fatal(err)
	}
	if inputs[0].SizeBytes != 1000 || inputs[1].SizeBytes != 500 || inputs[1].LocalName != "2_bytes" {
		t.Errorf("inputs = %+v", inputs)
	}
}

func TestFetchRefused(t *testing.T) {
	srv := fileServer(t)
	f := newTestFetcher(t, FetchLimits{})
	strict := newTestFetcher(t, FetchLimits{AllowCIDRs: []string{}, AllowHosts: []string{}})

	// A second server on 127.0.0.2, which the allow-list does not admit:
	// if the policy failed, the request would succeed and be counted.
	var hits atomic.Int32
	ln, err := net.Listen("tcp", "127.0.0.2:0")
	if err != nil {
		t.Skipf("cannot listen on 127.0.0.2: %v", err)
	}
	internal := &httptest.Server{
		Listener: ln,
		Config: &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			hits.Add(1)
			fmt.Fprint(w, "secret")
		})},
	}
	internal.Start()
	t.Cleanup(internal.Close)
	_, port, _ := net.SplitHostPort(srv.Listener.Addr().String())

	tests := []struct {
		name  string
		f     *Fetcher
		url   string
		code  string
		parts []string
	}{
		{"private", f, "http://10.0.0.1/x.csv", codegw.EFORBIDDEN, []string{`"http://10.0.0.1/x.csv" refused`, "address 10.0.0.1 is private"}},
		{"metadata", f, "http://169.254.169.254/latest/meta-data/", codegw.EFORBIDDEN, []string{"169.254.169.254 is link-local"}},
		{"loopback not admitted", f, internal.URL + "/x", codegw.EFORBIDDEN, []string{internal.URL, "address 127.0.0.2 is loopback"}},
		{"mapped loopback", f, "http://[::ffff:127.0.0.2]:" + port + "/x", codegw.EFORBIDDEN, []string{"127.0.0.2 is loopback"}},
		{"unspecified", f, "http://0.0.0.0:" + port + "/data.csv", codegw.EFORBIDDEN, []string{"0.0.0.0 is unspecified"}},
		{"CGNAT", f, "http://100.64.1.1/x", codegw.EFORBIDDEN, []string{"100.64.1.1 is shared"}},
		{"loopback without allow-list", strict, srv.URL + "/data.csv", codegw.EFORBIDDEN, []string{srv.URL, "127.0.0.1 is loopback"}},
		{"host name judged on its address", strict, "http://localhost:" + port + "/data.csv", codegw.EFORBIDDEN, []string{"is loopback"}},
		{"redirect to refused address", f, srv.URL + "/redirect?to=" + escape(internal.URL+"/x"), codegw.EFORBIDDEN, []string{"redirect", "127.0.0.2 is loopback"}},
		{"redirect to metadata", f, srv.URL + "/redirect?to=" + escape("http://169.254.169.254/latest"), codegw.EFORBIDDEN, []string{"169.254.169.254 is link-local"}},
		{"redirect to file scheme", f, srv.URL + "/redirect?to=" + escape("file:///etc/passwd"), codegw.EFORBIDDEN, []string{`scheme "file"`}},
		{"redirect loop", f, srv.URL + "/loop", codegw.EFETCH, []string{srv.URL + "/loop", "more than 5 redirects"}},
		{"file scheme", f, "file:///etc/passwd", codegw.EINVALID, []string{`"file:///etc/passwd"`, "only http and https"}},
		{"ftp scheme", f, "ftp://example.com/x", codegw.EINVALID, []string{"only http and https"}},
		{"no host", f, "http:///x", codegw.EINVALID, []string{"no host"}},
		{"not a URL", f, "http://[::1", codegw.EINVALID, []string{"not a valid URL"}},
		{"relative", f, "data.csv", codegw.EINVALID, []string{"only http and https"}},
		{"status 404", f, srv.URL + "/missing", codegw.EFETCH, []string{srv.URL + "/missing", "404 Not Found"}},
		{"connection refused", f, "http://127.0.0.1:1/x", codegw.EFETCH, []string{"127.0.0.1:1/x", "refused"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			_, _, err := tt.f.Fetch(context.Background(), []string{tt.url}, "", dir)
			t.Logf("%s: %s", codegw.ErrorCode(err), codegw.ErrorMessage(err))
			testcheck.WantCode(t, err, tt.code, tt.parts...)
			if got := testcheck.DirNames(t, dir); len(got) != 0 {
				t.Errorf("input dir not cleaned: %v", got)
			}
		})
	}
	if n := hits.Load(); n != 0 {
		t.Errorf("the internal server was reached %d times", n)
	}

	// The allow-list admits by host name too.
	byName := newTestFetcher(t, FetchLimits{AllowHosts: []string{"LOCALHOST"}})
	if _, _, err := byName.Fetch(context.Background(), []string{"http://localhost:" + port + "/data.csv"}, "", t.TempDir()); err != nil {
		t.Errorf("allowed host refused: %v", err)
	}
}

func TestFetchEarlierFilesRemovedOnError(t *testing.T) {
	srv := fileServer(t)
	f := newTestFetcher(t, FetchLimits{})
	dir := t.TempDir()
	_, _, err := f.Fetch(context.Background(), []string{srv.URL + "/data.csv", srv.URL + "/echo?name=b.txt", srv.URL + "/missing"}, "", dir)
	testcheck.WantCode(t, err, codegw.EFETCH, "/missing")
	if got := testcheck.DirNames(t, dir); len(got) != 0 {
		t.Errorf("input dir not cleaned: %v", got)
	}
}

func TestFetchTimeout(t *testing.T) {
	release := make(chan struct{})
	stall := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/midway" {
			fmt.Fprint(w, "partial")
			w.(http.Flusher).Flush()
		}
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	t.Cleanup(stall.Close)
	t.Cleanup(func() { close(release) })
	f := newTestFetcher(t, FetchLimits{Timeout: 200 * time.Millisecond})
	for _, p := range []string{"/headers", "/midway"} {
		t.Run(p, func(t *testing.T) {
			dir := t.TempDir()
			start := time.Now()
			_, _, err := f.Fetch(context.Background(), []string{stall.URL + p}, "", dir)
			testcheck.WantCode(t, err, codegw.EFETCH, stall.URL+p, "timed out after 200ms")
			if d := time.Since(start); d > 5*time.Second {
				t.Errorf("Fetch took %s", d)
			}
			if got := testcheck.DirNames(t, dir); len(got) != 0 {
				t.Errorf("input dir not cleaned: %v", got)
			}
		})
	}
	// A caller's cancellation is reported as such, not as our timeout.
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(50*time.Millisecond, cancel)
	_, _, err := newTestFetcher(t, FetchLimits{Timeout: time.Minute}).Fetch(ctx, []string{stall.URL + "/x"}, "", t.TempDir())
	testcheck.WantCode(t, err, codegw.EFETCH, "canceled")
}

func TestNewFetcherDefaults(t *testing.T) {
	f, err := NewFetcher(FetchLimits{})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := f.Limits(), DefaultFetchLimits(); got.MaxFiles != want.MaxFiles || got.Timeout != want.Timeout || got.MaxRedirects != 5 {
		t.Errorf("limits = %+v", got)
	}
	if _, err := NewFetcher(FetchLimits{AllowCIDRs: []string{"10.0.0.0/33"}}); err == nil {
		t.Error("NewFetcher accepted a bad CIDR")
	}
}

func TestFetchIgnoresProxyEnvironment(t *testing.T) {
	srv := fileServer(t)
	var proxied atomic.Int32
	proxy := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		proxied.Add(1)
		fmt.Fprint(w, "from proxy")
	}))
	t.Cleanup(proxy.Close)
	t.Setenv("HTTP_PROXY", proxy.URL)
	t.Setenv("http_proxy", proxy.URL)
	f := newTestFetcher(t, FetchLimits{})
	// A public-looking address would go to the proxy if the environment
	// were honoured; instead the dialer judges it itself.
	_, _, err := f.Fetch(context.Background(), []string{"http://10.255.255.1/x"}, "", t.TempDir())
	testcheck.WantCode(t, err, codegw.EFORBIDDEN, "10.255.255.1 is private")
	dir := t.TempDir()
	if _, _, err := f.Fetch(context.Background(), []string{srv.URL + "/data.csv"}, "", dir); err != nil {
		t.Fatal(err)
	}
	if proxied.Load() != 0 {
		t.Error("the request went through HTTP_PROXY")
	}
}

func TestFetchLimitAppliesToDecompressedBody(t *testing.T) {
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	zw.Write(make([]byte, 1<<20))
	zw.Close()
	bomb := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Encoding", "gzip")
		w.Header().Set("Content-Length", fmt.Sprint(buf.Len()))
		w.Write(buf.Bytes())
	}))
	t.Cleanup(bomb.Close)
	f := newTestFetcher(t, FetchLimits{MaxFileBytes: 100 << 10})
	dir := t.TempDir()
	_, _, err := f.Fetch(context.Background(), []string{bomb.URL + "/z.csv"}, "", dir)
	testcheck.WantCode(t, err, codegw.ETOOLARGE, bomb.URL+"/z.csv", "per-file limit")
	if got := testcheck.DirNames(t, dir); len(got) != 0 {
		t.Errorf("input dir not cleaned: %v", got)
	}
}
