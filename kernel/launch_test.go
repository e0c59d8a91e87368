package kernel_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/codegw/codegw/kernel"
)

// dyingProvisioner starts a real kernel and kills it at once, before its
// sockets exist: a kernel that dies while it starts (a forked child that
// fails to set itself up, a zygote or container killed meanwhile).
type dyingProvisioner struct{ plainProvisioner }

func (p *dyingProvisioner) Start(ctx context.Context, spec kernel.Spec) (kernel.Process, error) {
	proc, err := p.plainProvisioner.Start(ctx, spec)
	if err == nil {
		proc.Kill(ctx)
	}
	return proc, err
}

// A kernel that dies before its sockets are bound fails its launch with
// ErrDied at once, not when the start's deadline passes.
func TestLaunchDiesBeforeSockets(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	t0 := time.Now()
	k, err := kernel.Launch(ctx, &dyingProvisioner{plainProvisioner{dir: t.TempDir()}}, kernel.Spec{ID: "dies"}, kernel.LaunchOptions{})
	if err == nil {
		k.Close(context.Background())
		t.Fatal("launch of a dead kernel succeeded")
	}
	if !errors.Is(err, kernel.ErrDied) {
		t.Errorf("err = %v, want ErrDied", err)
	}
	if d := time.Since(t0); d > 5*time.Second {
		t.Errorf("launch failed after %v", d)
	}
}
