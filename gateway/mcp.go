package gateway

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"net/http"
	"sync"

	"github.com/gofiber/fiber/v2"

	"github.com/codegw/codegw"
	"github.com/codegw/codegw/mcpserver"
)

// mcp serves /mcp with Config.MCP, a net/http handler, after auth. It is a
// streaming bridge rather than Fiber's adaptor, which buffers the whole
// response: MCP answers are server-sent event streams that stay open
// (progress notifications while code runs, the session's GET stream).
// The request is copied out of fasthttp's buffers, as the handler outlives
// this Fiber handler; a client going away cancels its context.
func (s *Server) mcp(c *fiber.Ctx) error {
	ctx, cancel := context.WithCancel(mcpserver.WithOwner(s.mcpCtx, owner(c)))
	r, err := http.NewRequestWithContext(ctx, c.Method(), c.OriginalURL(), bytes.NewReader(bytes.Clone(c.Body())))
	if err != nil {
		cancel()
		return err
	}
	r.Host = string(c.Request().Host())
	r.RemoteAddr = c.Context().RemoteAddr().String()
	c.Request().Header.VisitAll(func(k, v []byte) { r.Header.Add(string(k), string(v)) })
	pr, pw := io.Pipe()
	w := &pipeResponse{h: http.Header{}, started: make(chan struct{}), pw: pw}
	go func() {
		defer pw.Close()
		defer codegw.Recover(r.Context(), "mcp handler", func(error) {
			w.WriteHeader(http.StatusInternalServerError)
		})
		fault("mcp handler")
		s.cfg.MCP.ServeHTTP(w, r)
		w.WriteHeader(http.StatusOK)
	}()
	<-w.started
	c.Status(w.status)
	for k, vs := range w.h {
		for _, v := range vs {
			c.Response().Header.Add(k, v)
		}
	}
	c.Context().SetBodyStreamWriter(func(bw *bufio.Writer) {
		defer cancel()
		defer pr.Close()
		defer codegw.Recover(r.Context(), "mcp stream writer", nil)
		buf := make([]byte, 32<<10)
		for {
			n, err := pr.Read(buf)
			if n > 0 {
				bw.Write(buf[:n])
				if bw.Flush() != nil {
					return
				}
			}
			if err != nil {
				return
			}
		}
	})
	return nil
}

// pipeResponse is the http.ResponseWriter of the bridge: the status and
// headers are taken at the first write, the body goes through a pipe and
// is flushed to the client as it comes.
type pipeResponse struct {
	h       http.Header
	status  int
	once    sync.Once
	started chan struct{}
	pw      *io.PipeWriter
}

func (w *pipeResponse) Header() http.Header { return w.h }

func (w *pipeResponse) WriteHeader(code int) {
	w.once.Do(func() {
		w.status = code
		w.h = w.h.Clone() // the handler may keep writing to its map
		close(w.started)
	})
}

func (w *pipeResponse) Write(b []byte) (int, error) {
	w.WriteHeader(http.StatusOK)
	return w.pw.Write(b)
}

// Flush is a no-op: every write is flushed.
func (w *pipeResponse) Flush() { w.WriteHeader(http.StatusOK) }
