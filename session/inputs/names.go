package inputs

import (
	"mime"
	"net/url"
	"path/filepath"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/codegw/codegw/internal/strutil"
)

// maxNameBytes bounds a local file name. It leaves room under the usual
// 255-byte limit for the "<n>_" collision prefix.
const maxNameBytes = 200

// queryNameKeys are the query parameters that name an input file, in the
// order the original project tried them.
var queryNameKeys = []string{"filename", "file_name", "name", "file"}

// SanitizeName turns a name taken from a URL or a header into a safe file
// name: only its last path element is kept (both / and \ separate), control
// characters are dropped, leading dots and surrounding spaces are removed,
// invalid UTF-8 is replaced and the result is bounded to 200 bytes, keeping
// the extension. It returns "" when nothing usable is left.
func SanitizeName(name string) string {
	name = strings.ToValidUTF8(name, "_")
	if i := strings.LastIndexAny(name, `/\`); i >= 0 {
		name = name[i+1:]
	}
	name = strings.Map(func(r rune) rune {
		if unicode.IsControl(r) || r == utf8.RuneError || unicode.Is(unicode.Cf, r) {
			return -1
		}
		return r
	}, name)
	name = strings.TrimSpace(name)
	name = strings.TrimLeft(name, ". ")
	name = strings.TrimRight(name, " ")
	if len(name) > maxNameBytes {
		ext := filepath.Ext(name)
		if len(ext) > 16 || len(ext) >= maxNameBytes {
			ext = ""
		}
		// The cut may end the stem in spaces, which a second pass would
		// trim: trim them here so that the result is its own sanitised name.
		name = strings.TrimRight(strutil.TruncateUTF8(name[:len(name)-len(ext)], maxNameBytes-len(ext)), " ") + ext
	}
	return name
}

// nameFromQuery returns the sanitised file name given by the URL's query.
func nameFromQuery(u *url.URL) string {
	q := u.Query()
	for _, k := range queryNameKeys {
		if n := SanitizeName(q.Get(k)); n != "" {
			return n
		}
	}
	return ""
}

// nameFromDisposition returns the sanitised file name of a
// Content-Disposition header value. filename* (RFC 5987: a charset, two
// quotes and a percent-encoded name) wins over filename, as
// mime.ParseMediaType does.
func nameFromDisposition(v string) string {
	if v == "" {
		return ""
	}
	if _, params, err := mime.ParseMediaType(v); err == nil {
		return SanitizeName(params["filename"])
	}
	// Servers send malformed values (unquoted spaces, stray semicolons):
	// fall back to a lenient scan, preferring filename*.
	var plain, ext string
	for _, part := range strings.Split(v, ";") {
		k, val, ok := strings.Cut(strings.TrimSpace(part), "=")
		if !ok {
			continue
		}
		k = strings.ToLower(strings.TrimSpace(k))
		val = strings.Trim(strings.TrimSpace(val), `"`)
		switch k {
		case "filename":
			plain = val
		case "filename*":
			if _, rest, ok := strings.Cut(val, "''"); ok {
				if dec, err := url.PathUnescape(rest); err == nil {
					ext = dec
				}
			}
		}
	}
	if n := SanitizeName(ext); n != "" {
		return n
	}
	return SanitizeName(plain)
}

// nameFromPath returns the sanitised last segment of the URL's path, or ""
// when the path is empty or ends with a slash.
func nameFromPath(u *url.URL) string {
	p := u.EscapedPath()
	seg := p[strings.LastIndex(p, "/")+1:]
	if dec, err := url.PathUnescape(seg); err == nil {
		seg = dec
	}
	return SanitizeName(seg)
}

// normalizeHost returns the form of a host name used to match the
// allow-list: lower case, without brackets or a trailing dot.
func normalizeHost(h string) string {
	h = strings.TrimSuffix(strings.TrimPrefix(strings.TrimSpace(h), "["), "]")
	return strings.TrimSuffix(strings.ToLower(h), ".")
}
