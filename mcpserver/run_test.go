package mcpserver

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"
)

// slowClose is a Kernel (its methods other than Files and Close are not
// called) whose Close takes a while, as deleting a remote session does on
// a loaded machine.
type slowClose struct {
	Kernel
	closed atomic.Bool
}

func (k *slowClose) Files(context.Context) ([]File, error) { return nil, nil }

func (k *slowClose) Close() error {
	time.Sleep(200 * time.Millisecond) // the fault: a slow delete
	k.closed.Store(true)
	return nil
}

type openSlow struct {
	Backend
	k *slowClose
}

func (b openSlow) Open(context.Context, string) (Kernel, error) { return b.k, nil }

// TestRunWaitsForClose: when its context ends, Run returns only once the
// kernel is deleted (`codegw mcp` exits right after Run: a delete still
// on its way was lost with the process, and the remote session stayed).
func TestRunWaitsForClose(t *testing.T) {
	k := &slowClose{}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	st, ct := mcp.NewInMemoryTransports()
	done := make(chan error, 1)
	go func() { done <- Run(ctx, &Config{Backend: openSlow{k: k}}, "owner", nil, st) }()
	c := mcp.NewClient(&mcp.Implementation{Name: "test", Version: "1"}, nil)
	cs, err := c.Connect(ctx, ct, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer cs.Close()
	if res, err := cs.CallTool(ctx, &mcp.CallToolParams{Name: "list_files", Arguments: map[string]any{}}); err != nil || res.IsError {
		t.Fatalf("list_files: %v %+v", err, res)
	}
	cancel()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("Run did not return after its context ended")
	}
	if !k.closed.Load() {
		t.Error("Run returned before the kernel was deleted")
	}
}
