package local

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/codegw/codegw/kernel"
)

// BenchmarkStartReady measures a kernel's start until ready (kernel_info
// reply and iopub idle) and its close, with the launcher's default preload
// (numpy, pandas, matplotlib) and with none, plainly and under bwrap. The
// plain kernel without preload is the baseline the others are compared to.
//
//	go test -run '^$' -bench StartReady -benchtime 5x ./kernel/local/
func BenchmarkStartReady(b *testing.B) {
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	modes := []string{SandboxNone}
	if p, err := New(Config{Sandbox: SandboxBwrap, StateDir: stateDir, Logger: quiet}); err == nil {
		p.Close()
		modes = append(modes, SandboxBwrap)
	}
	for _, mode := range modes {
		for _, preload := range []struct {
			name    string
			modules []string
		}{{"bare", []string{}}, {"preload", nil}} {
			b.Run(fmt.Sprintf("%s/%s", mode, preload.name), func(b *testing.B) {
				p, err := New(Config{Sandbox: mode, StateDir: stateDir, Preload: preload.modules, Logger: quiet})
				if err != nil {
					b.Fatal(err)
				}
				defer p.Close()
				var ready time.Duration
				for i := 0; i < b.N; i++ {
					ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
					t0 := time.Now()
					proc, err := p.Start(ctx, kernel.Spec{ID: newID()})
					if err != nil {
						b.Fatal(err)
					}
					c, err := kernel.Dial(ctx, proc.ConnectionInfo(), kernel.ClientOptions{HeartbeatTimeout: -1, Logger: quiet})
					if err != nil {
						b.Fatal(err)
					}
					if _, err := c.WaitReady(ctx); err != nil {
						b.Fatal(err)
					}
					ready += time.Since(t0)
					c.Close()
					if err := proc.Close(ctx); err != nil {
						b.Fatal(err)
					}
					cancel()
				}
				b.ReportMetric(float64(ready.Milliseconds())/float64(b.N), "ms-ready/op")
			})
		}
	}
}
