package inputs

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/codegw/codegw"
)

// FetchLimits bounds the download of input files.
type FetchLimits struct {
	// MaxFiles is the most URLs one request may list (INPUT_MAX_FILES).
	MaxFiles int
	// MaxFileBytes bounds each file (INPUT_FILE_MAX_BYTES).
	MaxFileBytes int64
	// MaxTotalBytes bounds the files of one request together
	// (INPUT_TOTAL_MAX_BYTES).
	MaxTotalBytes int64
	// Timeout bounds the whole download phase of one request.
	Timeout time.Duration
	// MaxRedirects bounds the redirects followed per URL.
	MaxRedirects int
	// AllowHosts admits host names (or IP literals) that would otherwise be
	// refused because of the address they resolve to, e.g. "localhost" or
	// an internal file server. Matching is exact and case-insensitive.
	AllowHosts []string
	// AllowCIDRs admits addresses that would otherwise be refused, e.g.
	// "127.0.0.1/32" or "10.1.2.0/24". A bare address means that address.
	AllowCIDRs []string
}

// DefaultFetchLimits returns the limits used when none are configured.
func DefaultFetchLimits() FetchLimits {
	return FetchLimits{
		MaxFiles:      5,
		MaxFileBytes:  50 << 20,
		MaxTotalBytes: 100 << 20,
		Timeout:       60 * time.Second,
		MaxRedirects:  5,
	}
}

// Fetcher downloads input files into a session's input directory. Every
// connection it makes, including each redirect hop, is judged on the
// address actually connected to, so neither a redirect nor DNS rebinding can
// reach a loopback, private, link-local or otherwise internal address that
// the allow-list does not admit. It ignores proxy settings from the
// environment. A Fetcher is safe for concurrent use.
type Fetcher struct {
	lim    FetchLimits
	policy *addrPolicy
	client *http.Client
}

// NewFetcher returns a Fetcher with the given limits. Zero limits take
// their value from DefaultFetchLimits; it fails on a malformed AllowCIDRs
// entry.
func NewFetcher(lim FetchLimits) (*Fetcher, error) {
	def := DefaultFetchLimits()
	// Zero or negative limits take their default.
	lim.MaxFiles = cmp.Or(max(lim.MaxFiles, 0), def.MaxFiles)
	lim.MaxFileBytes = cmp.Or(max(lim.MaxFileBytes, 0), def.MaxFileBytes)
	lim.MaxTotalBytes = cmp.Or(max(lim.MaxTotalBytes, 0), def.MaxTotalBytes)
	lim.Timeout = cmp.Or(max(lim.Timeout, 0), def.Timeout)
	lim.MaxRedirects = cmp.Or(max(lim.MaxRedirects, 0), def.MaxRedirects)
	policy, err := newAddrPolicy(lim.AllowHosts, lim.AllowCIDRs)
	if err != nil {
		return nil, err
	}
	f := &Fetcher{lim: lim, policy: policy}
	tr := &http.Transport{
		Proxy:                  nil, // never HTTP(S)_PROXY: the proxy would connect for us, unchecked
		DialContext:            f.dialContext,
		ForceAttemptHTTP2:      true,
		TLSHandshakeTimeout:    10 * time.Second,
		MaxIdleConns:           16,
		IdleConnTimeout:        30 * time.Second,
		MaxResponseHeaderBytes: 64 << 10,
	}
	f.client = &http.Client{Transport: tr, CheckRedirect: f.checkRedirect}
	return f, nil
}

// Limits returns the limits in force, defaults applied.
func (f *Fetcher) Limits() FetchLimits { return f.lim }

// dialContext dials addr and lets the connection proceed only if the
// resolved address, judged right before connect(2), is allowed for the host
// named in addr.
func (f *Fetcher) dialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	d := net.Dialer{
		Timeout: 30 * time.Second,
		ControlContext: func(_ context.Context, _, address string, _ syscall.RawConn) error {
			ap, err := netip.ParseAddrPort(address)
			if err != nil {
				return fmt.Errorf("unparsable address %q: %w", address, err)
			}
			return f.policy.check(host, ap.Addr())
		},
	}
	return d.DialContext(ctx, network, addr)
}

// redirectError is returned by checkRedirect; Fetch maps it to a code.
type redirectError struct {
	code string
	msg  string
}

func (e *redirectError) Error() string { return e.msg }

func (f *Fetcher) checkRedirect(req *http.Request, via []*http.Request) error {
	if len(via) > f.lim.MaxRedirects {
		return &redirectError{codegw.EFETCH, fmt.Sprintf("more than %d redirects", f.lim.MaxRedirects)}
	}
	if s := req.URL.Scheme; s != "http" && s != "https" {
		return &redirectError{codegw.EFORBIDDEN, fmt.Sprintf("redirect to scheme %q is not allowed", s)}
	}
	return nil
}

// errFetchTimeout is the cause of the download phase's deadline.
var errFetchTimeout = errors.New("input download timed out")

// Fetch downloads urls into inputDir (created if needed) and returns code
// with every occurrence of each URL replaced by the file's path inside the
// kernel, /code/input/<local_name>, together with the downloaded files.
//
// A file's name comes from the URL's query (filename, file_name, name,
// file), then the response's Content-Disposition, then the last segment of
// the URL's path, else file_<n>; a name already taken in this request
// becomes <n>_<name>, n being the URL's 1-based position. Files are written
// under temporary names and moved into place only when every download
// succeeded, so on error inputDir is left as it was. A file that exists in
// inputDir under the same name (from an earlier execution of a session) is
// replaced.
//
// Every error is a *codegw.Error, and one about a URL names it and the
// reason: EINVALID for a malformed URL or scheme, EFORBIDDEN for a refused
// address (also after a redirect), ETOOLARGE for the count and size limits,
// EFETCH for network errors, timeouts, too many redirects and non-2xx
// answers, EINTERNAL when the input directory cannot be written.
func (f *Fetcher) Fetch(ctx context.Context, urls []string, code, inputDir string) (string, []codegw.InputFile, error) {
	if len(urls) == 0 {
		return code, []codegw.InputFile{}, nil
	}
	if len(urls) > f.lim.MaxFiles {
		return code, nil, codegw.Errorf(codegw.ETOOLARGE, "too many input files: %d (the limit is %d)", len(urls), f.lim.MaxFiles)
	}
	parsed := make([]*url.URL, len(urls))
	urls = trimAll(urls)
	for i, raw := range urls {
		u, err := parseInputURL(raw)
		if err != nil {
			return code, nil, err
		}
		parsed[i] = u
	}

	root, err := openInputRoot(inputDir)
	if err != nil {
		return code, nil, codegw.WrapError(codegw.EINTERNAL, err, "cannot prepare the input directory")
	}
	defer root.Close()

	ctx, cancel := context.WithTimeoutCause(ctx, f.lim.Timeout, errFetchTimeout)
	defer cancel()

	var (
		temps  []string // temporary names, in order
		inputs = make([]codegw.InputFile, 0, len(urls))
		taken  = make(map[string]bool, len(urls))
		total  int64
	)
	cleanup := func() {
		for _, t := range temps {
			_ = root.Remove(t)
		}
	}
	for i, u := range parsed {
		raw := urls[i]
		tmp, name, size, err := f.download(ctx, root, u, raw, i+1, f.lim.MaxTotalBytes-total)
		if tmp != "" {
			temps = append(temps, tmp)
		}
		if err != nil {
			cleanup()
			return code, nil, err
		}
		total += size
		local := uniqueName(name, i+1, taken)
		taken[local] = true
		inputs = append(inputs, codegw.InputFile{
			URL:          raw,
			OriginalName: name,
			LocalName:    local,
			LocalPath:    path.Join(KernelDir, local),
			SizeBytes:    size,
		})
	}
	for i, in := range inputs {
		if err := root.Rename(temps[i], in.LocalName); err != nil {
			cleanup()
			// Files renamed before this one stay; they are complete and
			// named as reported, but the call fails as a whole.
			return code, nil, codegw.WrapError(codegw.EINTERNAL, err, "cannot store input file %q", in.URL)
		}
	}
	return ReplaceURLs(code, inputs), inputs, nil
}

// parseInputURL checks that raw is an absolute http or https URL with a host.
func parseInputURL(raw string) (*url.URL, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return nil, codegw.Errorf(codegw.EINVALID, "input file %q is not a valid URL", raw)
	}
	switch strings.ToLower(u.Scheme) {
	case "http", "https":
	default:
		return nil, codegw.Errorf(codegw.EINVALID, "input file %q refused: only http and https URLs are allowed", raw)
	}
	if u.Host == "" || u.Hostname() == "" {
		return nil, codegw.Errorf(codegw.EINVALID, "input file %q has no host", raw)
	}
	return u, nil
}

// openInputRoot creates dir if needed and opens it as an os.Root, refusing a
// dir that is a symlink (a kernel could plant one to make the gateway write
// elsewhere). Every later operation stays inside the root.
func openInputRoot(dir string) (*os.Root, error) {
	parent, base := filepath.Dir(dir), filepath.Base(dir)
	if err := os.MkdirAll(parent, 0o755); err != nil {
		return nil, err
	}
	proot, err := os.OpenRoot(parent)
	if err != nil {
		return nil, err
	}
	defer proot.Close()
	if err := proot.Mkdir(base, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
		return nil, err
	}
	fi, err := proot.Lstat(base)
	if err != nil {
		return nil, err
	}
	if !fi.IsDir() {
		return nil, fmt.Errorf("%s is not a directory", dir)
	}
	return proot.OpenRoot(base)
}

// download fetches one URL into a temporary file in root and returns the
// temporary name (set whenever a file was created, even on error), the
// file's name and its size. budget is what is left of the total limit.
func (f *Fetcher) download(ctx context.Context, root *os.Root, u *url.URL, raw string, n int, budget int64) (tmp, name string, size int64, err error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return "", "", 0, codegw.Errorf(codegw.EINVALID, "input file %q is not a valid URL", raw)
	}
	req.Header.Set("User-Agent", "codegw")
	resp, err := f.client.Do(req)
	if err != nil {
		return "", "", 0, f.requestError(ctx, raw, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return "", "", 0, codegw.Errorf(codegw.EFETCH, "input file %q could not be downloaded: %s", raw, resp.Status)
	}

	name = nameFromQuery(u)
	if name == "" {
		name = nameFromDisposition(resp.Header.Get("Content-Disposition"))
	}
	if name == "" {
		name = nameFromPath(u)
	}
	if name == "" {
		name = "file_" + strconv.Itoa(n)
	}

	limit, what := f.lim.MaxFileBytes, fmt.Sprintf("the per-file limit of %d bytes", f.lim.MaxFileBytes)
	if budget < limit {
		limit, what = budget, fmt.Sprintf("the total limit of %d bytes", f.lim.MaxTotalBytes)
	}
	if resp.ContentLength > limit {
		return "", "", 0, codegw.Errorf(codegw.ETOOLARGE, "input file %q is too large: %d bytes exceeds %s", raw, resp.ContentLength, what)
	}

	tmp = ".fetch-" + codegw.NewID()[:13] + ".part"
	out, err := root.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return "", "", 0, codegw.WrapError(codegw.EINTERNAL, err, "cannot store input file %q", raw)
	}
	// Read at most one byte past the limit: enough to know it was exceeded
	// without ever holding or writing more.
	size, err = io.Copy(out, io.LimitReader(resp.Body, limit+1))
	if cerr := out.Close(); err == nil && cerr != nil {
		return tmp, "", 0, codegw.WrapError(codegw.EINTERNAL, cerr, "cannot store input file %q", raw)
	}
	if err != nil {
		var we *os.PathError
		if errors.As(err, &we) {
			return tmp, "", 0, codegw.WrapError(codegw.EINTERNAL, err, "cannot store input file %q", raw)
		}
		return tmp, "", 0, f.requestError(ctx, raw, err)
	}
	if size > limit {
		return tmp, "", 0, codegw.Errorf(codegw.ETOOLARGE, "input file %q is too large: it exceeds %s", raw, what)
	}
	return tmp, name, size, nil
}

// requestError turns an error of the HTTP client into a *codegw.Error that
// names the URL and the reason.
func (f *Fetcher) requestError(ctx context.Context, raw string, err error) error {
	if errors.Is(context.Cause(ctx), errFetchTimeout) {
		return codegw.WrapError(codegw.EFETCH, err, "input file %q could not be downloaded: timed out after %s", raw, f.lim.Timeout)
	}
	var re *refusedError
	if errors.As(err, &re) {
		return codegw.WrapError(codegw.EFORBIDDEN, err, "input file %q refused: %s", raw, refusedReason(raw, re))
	}
	var rd *redirectError
	if errors.As(err, &rd) {
		verb := "could not be downloaded"
		if rd.code == codegw.EFORBIDDEN {
			verb = "refused"
		}
		return codegw.WrapError(rd.code, err, "input file %q %s: %s", raw, verb, rd.msg)
	}
	if ctx.Err() != nil {
		return codegw.WrapError(codegw.EFETCH, err, "input file %q could not be downloaded: %v", raw, context.Cause(ctx))
	}
	return codegw.WrapError(codegw.EFETCH, err, "input file %q could not be downloaded: %s", raw, netReason(err))
}

// refusedReason describes a refusal, naming the host reached by a redirect
// when it is not the URL's own.
func refusedReason(raw string, re *refusedError) string {
	if u, err := url.Parse(raw); err == nil && normalizeHost(u.Hostname()) != normalizeHost(re.Host) {
		return fmt.Sprintf("redirect to host %q: %s", re.Host, re.Error())
	}
	return re.Error()
}

// netReason returns the innermost useful text of a client error, without the
// "Get <url>:" prefix of *url.Error (the message names the URL already).
func netReason(err error) string {
	var ue *url.Error
	if errors.As(err, &ue) {
		err = ue.Err
	}
	return err.Error()
}

// uniqueName returns name, or <n>_<name> when name is taken, or
// <n>_<k>_<name> should that be taken too.
func uniqueName(name string, n int, taken map[string]bool) string {
	if !taken[name] {
		return name
	}
	prefix := strconv.Itoa(n) + "_"
	cand := prefix + name
	for k := 2; taken[cand]; k++ {
		cand = prefix + strconv.Itoa(k) + "_" + name
	}
	return cand
}

// ReplaceURLs replaces every occurrence of each input's URL in code by the
// input's LocalPath. Longer URLs are matched first, so a URL that is a
// prefix of another does not mangle it, and the replacement is one pass, so
// a replaced path is never rewritten again. When a URL is listed twice, its
// first file wins.
func ReplaceURLs(code string, inputs []codegw.InputFile) string {
	seen := make(map[string]bool, len(inputs))
	ordered := make([]codegw.InputFile, 0, len(inputs))
	for _, in := range inputs {
		if in.URL == "" || seen[in.URL] {
			continue
		}
		seen[in.URL] = true
		ordered = append(ordered, in)
	}
	if len(ordered) == 0 {
		return code
	}
	sort.SliceStable(ordered, func(i, j int) bool { return len(ordered[i].URL) > len(ordered[j].URL) })
	pairs := make([]string, 0, 2*len(ordered))
	for _, in := range ordered {
		pairs = append(pairs, in.URL, in.LocalPath)
	}
	return strings.NewReplacer(pairs...).Replace(code)
}

// trimAll returns a copy of ss with surrounding white space removed.
func trimAll(ss []string) []string {
	out := make([]string, len(ss))
	for i, s := range ss {
		out[i] = strings.TrimSpace(s)
	}
	return out
}
