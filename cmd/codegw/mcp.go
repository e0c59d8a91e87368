package main

import (
	"context"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/codegw/codegw/app"
	"github.com/codegw/codegw/mcpserver"
	"github.com/codegw/codegw/session/inputs"
)

// serveMCP serves MCP over stdio for desktop clients: through a running
// gateway with --url (or CODEGW_URL), or on local kernels started here
// (configured by the same environment variables as serve). Logs go to
// stderr; stdout is the protocol.
func serveMCP(args []string) error {
	fs, cf := newFlags("mcp")
	if err := fs.Parse(args); err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	slog.SetDefault(log)
	var cfg mcpserver.Config
	if cf.url != "" {
		c, err := cf.client()
		if err != nil {
			return err
		}
		fetcher, err := inputs.NewFetcher(inputs.DefaultFetchLimits())
		if err != nil {
			return err
		}
		base := strings.TrimRight(cf.url, "/")
		cfg = mcpserver.Config{Backend: mcpserver.Remote{C: c}, Fetcher: fetcher, Resolve: func(u string) string {
			if strings.HasPrefix(u, "/") {
				return base + u
			}
			return u
		}}
	} else {
		acfg, err := LoadConfig()
		if err != nil {
			return err
		}
		acfg.Logger = log
		a, err := app.Open(ctx, acfg)
		if err != nil {
			return err
		}
		defer a.Close()
		m := a.Manager
		cfg = mcpserver.Config{Backend: mcpserver.Manager{M: m, UploadLimit: acfg.UploadLimit}, Fetcher: m.Config().Fetcher,
			Resolve: func(u string) string {
				// No server here: stored files are linked on disk.
				if name, ok := strings.CutPrefix(u, acfg.FileURLPrefix+"/"); ok {
					return "file://" + filepath.Join(absPath(acfg.FileStorePath), name)
				}
				if name, ok := strings.CutPrefix(u, acfg.ImageURLPrefix+"/"); ok {
					return "file://" + filepath.Join(absPath(acfg.ImageStorePath), name)
				}
				return u
			}}
	}
	// The end of stdin ends the session (and its kernel) at once.
	ctx, eof := context.WithCancel(ctx)
	defer eof()
	t := &mcp.IOTransport{Reader: eofReader{os.Stdin, eof}, Writer: os.Stdout}
	err := mcpserver.Run(ctx, &cfg, "stdio", cfg.Resolve, t)
	if ctx.Err() != nil {
		return nil
	}
	return err
}

// eofReader calls atEOF when its reader ends.
type eofReader struct {
	r     io.ReadCloser
	atEOF func()
}

func (e eofReader) Read(p []byte) (int, error) {
	n, err := e.r.Read(p)
	if err != nil {
		e.atEOF()
	}
	return n, err
}

func (e eofReader) Close() error { return e.r.Close() }

func absPath(p string) string {
	if a, err := filepath.Abs(p); err == nil {
		return a
	}
	return p
}
