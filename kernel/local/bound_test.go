package local

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/codegw/codegw/kernel"
)

// TestBound: spawned and forked kernels say when their sockets are bound
// (kernel.Binder), so the gateway dials once; the signal leaves nothing
// behind for user code, and a restarted kernel signals again.
func TestBound(t *testing.T) {
	for _, start := range []string{StartSpawn, StartFork} {
		for _, mode := range sandboxes(t) {
			t.Run(start+"/"+mode, func(t *testing.T) {
				p := newProvisioner(t, Config{Sandbox: mode, Start: start, Preload: []string{}})
				ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
				defer cancel()
				proc, err := p.Start(ctx, kernel.Spec{ID: newID()})
				if err != nil {
					t.Fatal(err)
				}
				k := proc.(*instance)
				t.Cleanup(func() { k.Close(context.Background()) })
				waitBound(t, k)

				ready := time.Now()
				c, err := kernel.Dial(ctx, k.ConnectionInfo(), kernel.ClientOptions{HeartbeatTimeout: -1, Logger: testLogger(t), Bound: k.Bound()})
				if err != nil {
					t.Fatal(err)
				}
				defer c.Close()
				if _, err := c.WaitReady(ctx); err != nil {
					t.Fatal(err)
				}
				t.Logf("ready %v after the bound signal", time.Since(ready).Round(time.Millisecond))
				if got := strings.TrimSpace(execute(t, c, "import os; print(sorted(k for k in os.environ if k.startswith('EXECUTOR_READY')))").stdout); got != "[]" {
					t.Errorf("user code sees %s", got)
				}

				if err := k.Restart(ctx); err != nil {
					t.Fatal(err)
				}
				waitBound(t, k)
			})
		}
	}
}

// waitBound waits for k's bound signal and checks that its sockets exist.
func waitBound(t *testing.T, k *instance) {
	t.Helper()
	select {
	case <-k.Bound():
	case <-k.Exited():
		t.Fatalf("kernel exited before it was bound: %+v\n%s", k.Exit(), k.Output())
	case <-time.After(startTimeout):
		t.Fatalf("no bound signal in %v\n%s", startTimeout, k.Output())
	}
	for _, f := range k.ConnectionInfo().SocketFiles() {
		if _, err := os.Stat(f); err != nil {
			t.Errorf("bound, but socket %s: %v", f, err)
		}
	}
}
