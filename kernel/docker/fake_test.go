package docker

// Pure functions and the rare error paths, with a fake engine at the
// dockerAPI seam. Everything else is tested on the real engine.

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/api/types/network"
	"github.com/docker/docker/client"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/codegw/codegw/kernel"
)

func TestExitFromState(t *testing.T) {
	tests := []struct {
		code int
		oom  bool
		want kernel.Exit
	}{
		{0, false, kernel.Exit{Code: 0}},
		{1, false, kernel.Exit{Code: 1}},
		{137, false, kernel.Exit{Code: -1, Signal: "killed"}},
		{137, true, kernel.Exit{Code: -1, Signal: "killed", OOMKilled: true}},
		{139, false, kernel.Exit{Code: -1, Signal: "segmentation fault"}},
		{255, false, kernel.Exit{Code: 255}},
	}
	for _, tt := range tests {
		if got := exitFromState(tt.code, tt.oom); got != tt.want {
			t.Errorf("exitFromState(%d, %v) = %+v, want %+v", tt.code, tt.oom, got, tt.want)
		}
	}
}

func TestParsePidsEvents(t *testing.T) {
	tests := map[string]int64{
		"max 0\n":   0,
		"max 17\n":  17,
		"max 3":     3,
		"":          0,
		"garbage\n": 0,
	}
	for in, want := range tests {
		if got := parsePidsEvents([]byte(in)); got != want {
			t.Errorf("parsePidsEvents(%q) = %d, want %d", in, got, want)
		}
	}
}

func TestParseUser(t *testing.T) {
	for _, tt := range []struct {
		in       string
		uid, gid int
		ok       bool
	}{
		{"1000:1000", 1000, 1000, true},
		{"1000", 1000, 1000, true},
		{"1000:50", 1000, 50, true},
		{"executor", 0, 0, false},
		{"1000:x", 0, 0, false},
	} {
		uid, gid, err := parseUser(tt.in)
		if (err == nil) != tt.ok || uid != tt.uid || gid != tt.gid {
			t.Errorf("parseUser(%q) = %d, %d, %v", tt.in, uid, gid, err)
		}
	}
}

// fakeEngine is a Docker engine with one container that can be told to fail.
type fakeEngine struct {
	mu        sync.Mutex
	pingErr   error
	imageErr  error
	removeErr error
	killErr   error
	created   int
	exited    chan struct{}
	exitCode  int
}

var errNotFound = cerrdefs.ErrNotFound.WithMessage("no such container")

func (f *fakeEngine) Ping(context.Context) (types.Ping, error) { return types.Ping{}, f.pingErr }
func (f *fakeEngine) ImageInspect(context.Context, string, ...client.ImageInspectOption) (image.InspectResponse, error) {
	return image.InspectResponse{}, f.imageErr
}
func (f *fakeEngine) ContainerCreate(context.Context, *container.Config, *container.HostConfig, *network.NetworkingConfig, *ocispec.Platform, string) (container.CreateResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.created++
	f.exited = make(chan struct{})
	return container.CreateResponse{ID: fmt.Sprintf("c%d", f.created)}, nil
}
func (f *fakeEngine) ContainerStart(context.Context, string, container.StartOptions) error {
	return nil
}
func (f *fakeEngine) ContainerWait(ctx context.Context, _ string, _ container.WaitCondition) (<-chan container.WaitResponse, <-chan error) {
	f.mu.Lock()
	exited := f.exited
	f.mu.Unlock()
	res, errc := make(chan container.WaitResponse, 1), make(chan error, 1)
	go func() {
		select {
		case <-exited:
			res <- container.WaitResponse{StatusCode: int64(f.exitCode)}
		case <-ctx.Done():
			errc <- ctx.Err()
		}
	}()
	return res, errc
}
func (f *fakeEngine) ContainerInspect(context.Context, string) (container.InspectResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	select {
	case <-f.exited:
		return container.InspectResponse{ContainerJSONBase: &container.ContainerJSONBase{
			State: &container.State{ExitCode: f.exitCode},
		}}, nil
	default:
		return container.InspectResponse{ContainerJSONBase: &container.ContainerJSONBase{
			State: &container.State{Running: true},
		}}, nil
	}
}
func (f *fakeEngine) ContainerKill(context.Context, string, string) error {
	if f.killErr != nil {
		return f.killErr
	}
	f.exit(137)
	return nil
}
func (f *fakeEngine) ContainerRename(context.Context, string, string) error { return nil }
func (f *fakeEngine) ContainerRemove(context.Context, string, container.RemoveOptions) error {
	if f.removeErr != nil {
		return f.removeErr
	}
	f.exit(137)
	return nil
}
func (f *fakeEngine) ContainerList(context.Context, container.ListOptions) ([]container.Summary, error) {
	return nil, nil
}
func (f *fakeEngine) Close() error { return nil }

func (f *fakeEngine) exit(code int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	select {
	case <-f.exited:
	default:
		f.exitCode = code
		close(f.exited)
	}
}

func fakeProvisioner(t *testing.T, f *fakeEngine) *Provisioner {
	t.Helper()
	p, err := newProvisioner(context.Background(), Config{
		InstanceID: "fake", StateDir: shortTempDir(t), User: fmt.Sprintf("%d:%d", os.Geteuid(), os.Getegid()), Logger: quiet,
	}, f, "unix:///fake.sock")
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestNewFake(t *testing.T) {
	t.Run("engine down", func(t *testing.T) {
		_, err := newProvisioner(context.Background(), Config{StateDir: t.TempDir()},
			&fakeEngine{pingErr: errors.New("connection refused")}, "unix:///fake.sock")
		if !errors.Is(err, kernel.ErrProvisioner) || !strings.Contains(err.Error(), "unix:///fake.sock") {
			t.Errorf("err %v", err)
		}
	})
	t.Run("image missing", func(t *testing.T) {
		_, err := newProvisioner(context.Background(), Config{StateDir: t.TempDir(), Image: "x/y:z"},
			&fakeEngine{imageErr: cerrdefs.ErrNotFound}, "unix:///fake.sock")
		if !errors.Is(err, kernel.ErrProvisioner) || !strings.Contains(err.Error(), "x/y:z") {
			t.Errorf("err %v", err)
		}
	})
}

func TestFakeLifecycle(t *testing.T) {
	ctx := context.Background()
	t.Run("exit is recorded", func(t *testing.T) {
		f := &fakeEngine{}
		p := fakeProvisioner(t, f)
		proc, err := p.Start(ctx, kernel.Spec{ID: "a"})
		if err != nil {
			t.Fatal(err)
		}
		f.exit(3)
		exit := waitExited(t, proc, 5*time.Second)
		if exit.Code != 3 || exit.Signal != "" {
			t.Errorf("exit %+v, want code 3", exit)
		}
		if err := proc.Close(ctx); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("kill of a stopped container", func(t *testing.T) {
		f := &fakeEngine{}
		p := fakeProvisioner(t, f)
		proc, _ := p.Start(ctx, kernel.Spec{ID: "b"})
		f.killErr = cerrdefs.ErrConflict.WithMessage("container is not running")
		if err := proc.Kill(ctx); err != nil {
			t.Errorf("Kill of a stopped container: %v", err)
		}
		f.killErr = nil
		proc.Close(ctx)
	})
	t.Run("close of a vanished container", func(t *testing.T) {
		f := &fakeEngine{}
		p := fakeProvisioner(t, f)
		proc, _ := p.Start(ctx, kernel.Spec{ID: "c"})
		f.exit(137)
		f.removeErr = errNotFound
		if err := proc.Close(ctx); err != nil {
			t.Errorf("Close with NotFound: %v", err)
		}
		if _, err := os.Stat(filepath.Join(p.cfg.StateDir, "c")); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("directory left: %v", err)
		}
		if p.isLive("c") {
			t.Error("kernel still counted live")
		}
	})
	t.Run("close fails, then succeeds", func(t *testing.T) {
		f := &fakeEngine{removeErr: errors.New("engine busy")}
		p := fakeProvisioner(t, f)
		proc, _ := p.Start(ctx, kernel.Spec{ID: "d"})
		if err := proc.Close(ctx); err == nil {
			t.Error("Close hid the engine's error")
		}
		f.removeErr = nil
		if err := proc.Close(ctx); err != nil {
			t.Errorf("second Close: %v", err)
		}
	})
	t.Run("bad ids", func(t *testing.T) {
		p := fakeProvisioner(t, &fakeEngine{})
		for _, id := range []string{"", "../x", "a/b", strings.Repeat("x", 65)} {
			if _, err := p.Start(ctx, kernel.Spec{ID: id}); err == nil {
				t.Errorf("Start(%q) succeeded", id)
			}
		}
	})
	t.Run("duplicate id", func(t *testing.T) {
		p := fakeProvisioner(t, &fakeEngine{})
		proc, err := p.Start(ctx, kernel.Spec{ID: "e"})
		if err != nil {
			t.Fatal(err)
		}
		defer proc.Close(ctx)
		if _, err := p.Start(ctx, kernel.Spec{ID: "e"}); err == nil {
			t.Error("second Start of a live id succeeded")
		}
	})
}
