// Package web is the playground: a page served at / that runs code through
// the public API only (stateless NDJSON execute and sessions over the
// websocket), so it doubles as the reference client for data-analysis chat
// frontends. Everything it loads is embedded in the binary and served by the
// gateway; its editor bundle (CodeMirror, built by editor/build.sh from the
// committed package-lock.json) is committed, so `go build` needs no npm.
package web

import (
	"embed"
	"mime"
	"path"
	"strings"

	"github.com/gofiber/fiber/v2"
)

//go:generate editor/build.sh

//go:embed static
var static embed.FS

// Prefix is where the page's assets are served; the page itself is at /.
const Prefix = "/playground/"

// CSP lets the page load only its own scripts, styles and images (images of
// executions come from the gateway's /images; inline ones are data: URLs)
// and talk only to its own origin, websockets included. HTML outputs are
// rendered in sandboxed srcdoc iframes without allow-scripts, which inherit
// this policy: inline styles are allowed for them, since pandas tables and
// Styler output carry <style> blocks and style attributes; with images and
// connections limited to this origin, a style cannot send anything away.
const CSP = "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; " +
	"connect-src 'self'; frame-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

// Mount serves the page at / and its assets under Prefix. Neither needs an
// API key: they are static, and the page sends the key with its API calls.
func Mount(r fiber.Router) {
	r.Get("/", serve("index.html"))
	r.Get(Prefix+"*", func(c *fiber.Ctx) error {
		return serve(c.Params("*"))(c)
	})
}

// serve answers one embedded file, or passes to the next handler (the
// gateway's 404) when there is none.
func serve(name string) fiber.Handler {
	return func(c *fiber.Ctx) error {
		if name == "" || strings.Contains(name, "..") {
			return c.Next()
		}
		data, err := static.ReadFile(path.Join("static", name))
		if err != nil {
			return c.Next()
		}
		ct := mime.TypeByExtension(path.Ext(name))
		if ct == "" {
			ct = "application/octet-stream"
		}
		c.Set(fiber.HeaderContentType, ct)
		c.Set("Content-Security-Policy", CSP)
		c.Set("X-Content-Type-Options", "nosniff")
		c.Set("Referrer-Policy", "no-referrer")
		c.Set(fiber.HeaderCacheControl, "no-cache")
		return c.Send(data)
	}
}
