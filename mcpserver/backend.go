package mcpserver

import (
	"context"
	"io"
	"sync"

	"github.com/codegw/codegw"
	"github.com/codegw/codegw/client"
	"github.com/codegw/codegw/session"
)

// Backend runs code for MCP sessions: a session.Manager in the gateway and
// in `codegw mcp` with local kernels, or a remote gateway through the
// client SDK.
type Backend interface {
	// Execute runs req on a fresh kernel; out gets the stdout text and the
	// output files as they arrive.
	Execute(ctx context.Context, owner string, req codegw.ExecuteRequest, out Stream) (*codegw.ExecuteResult, error)
	// Open starts the kernel of one MCP session of owner.
	Open(ctx context.Context, owner string) (Kernel, error)
}

// Kernel is the session kernel of one MCP session.
type Kernel interface {
	// Execute runs req; cancelling ctx interrupts the kernel and the answer
	// (status "interrupted") still comes back.
	Execute(ctx context.Context, req codegw.ExecuteRequest, out Stream) (*codegw.ExecuteResult, error)
	Restart(ctx context.Context) error
	// Files lists /code/output.
	Files(ctx context.Context) ([]File, error)
	// Read writes the output file name to w.
	Read(ctx context.Context, name string, w io.Writer) (int64, error)
	// Upload writes r into /code/input/name.
	Upload(ctx context.Context, name string, r io.Reader) (File, error)
	// Checkpoint snapshots the kernel's state (variables, /code); Restore
	// replaces the kernel with one started from such a snapshot.
	Checkpoint(ctx context.Context) (codegw.Snapshot, error)
	Restore(ctx context.Context, snapshot string) (*codegw.Restored, error)
	// Close deletes the session and its kernel.
	Close() error
}

// Stream receives what a run sends while it goes; nil fields are not
// called.
type Stream struct {
	// Stdout gets the stdout text as it is printed.
	Stdout func(string)
	// File gets each output file as soon as it is complete.
	File func(codegw.OutputFile)
}

// handler is s as the client SDK's callbacks.
func (s Stream) handler() client.Handler { return client.Handler{Stdout: s.Stdout, File: s.File} }

// File is a file in /code/output or /code/input.
type File struct {
	Name string
	Size int64
	// URL downloads it, relative to the server or absolute.
	URL string
}

// Manager is the Backend of a session.Manager; UploadLimit caps uploads
// (default 100 MiB).
type Manager struct {
	M           *session.Manager
	UploadLimit int64
}

// Execute implements Backend.
func (b Manager) Execute(ctx context.Context, owner string, req codegw.ExecuteRequest, out Stream) (*codegw.ExecuteResult, error) {
	return b.M.ExecuteFor(ctx, owner, req, out.events)
}

// Open implements Backend.
func (b Manager) Open(ctx context.Context, owner string) (Kernel, error) {
	s, err := b.M.Create(ctx, owner, session.CreateOptions{})
	if err != nil {
		return nil, err
	}
	limit := b.UploadLimit
	if limit <= 0 {
		limit = 100 << 20
	}
	return &managerKernel{m: b.M, current: current[*session.Session]{s: s}, owner: owner, limit: limit}, nil
}

// events passes a session's events to s.
func (s Stream) events(ev codegw.Event) {
	switch {
	case s.Stdout != nil && ev.Type == codegw.EventStream && ev.Name == "stdout":
		s.Stdout(ev.Text)
	case s.File != nil && ev.Type == codegw.EventFile && ev.File != nil:
		s.File(*ev.File)
	}
}

// current holds the session an MCP session's kernel is, which Restore
// replaces with one started from a checkpoint.
type current[S any] struct {
	mu sync.Mutex
	s  S
}

func (c *current[S]) sess() S {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.s
}

// swap makes s current and returns the session it replaces.
func (c *current[S]) swap(s S) S {
	c.mu.Lock()
	defer c.mu.Unlock()
	old := c.s
	c.s = s
	return old
}

type managerKernel struct {
	m     *session.Manager
	owner string
	limit int64
	current[*session.Session]
}

func (k *managerKernel) Checkpoint(ctx context.Context) (codegw.Snapshot, error) {
	return k.m.Checkpoint(ctx, k.sess().ID(), k.owner)
}

func (k *managerKernel) Restore(ctx context.Context, snapshot string) (*codegw.Restored, error) {
	s, err := k.m.Create(ctx, k.owner, session.CreateOptions{From: snapshot})
	if err != nil {
		return nil, err
	}
	k.m.Delete(k.swap(s).ID(), k.owner)
	return s.Restored(), nil
}

func (k *managerKernel) Execute(ctx context.Context, req codegw.ExecuteRequest, out Stream) (*codegw.ExecuteResult, error) {
	stop := context.AfterFunc(ctx, func() { k.sess().Interrupt(context.Background()) })
	defer stop()
	return k.sess().Execute(context.WithoutCancel(ctx), req, out.events)
}

func (k *managerKernel) Restart(ctx context.Context) error { return k.sess().Restart(ctx) }

func (k *managerKernel) Files(ctx context.Context) ([]File, error) {
	list, err := k.sess().Outputs()
	if err != nil {
		return nil, err
	}
	out := make([]File, len(list))
	for i, f := range list {
		out[i] = File{Name: f.Name, Size: f.Size, URL: "/api/v1/sessions/" + k.sess().ID() + "/files/" + f.Name}
	}
	return out, nil
}

func (k *managerKernel) Read(ctx context.Context, name string, w io.Writer) (int64, error) {
	f, _, err := k.sess().OpenOutput(name)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	return io.Copy(w, f)
}

func (k *managerKernel) Upload(ctx context.Context, name string, r io.Reader) (File, error) {
	fi, err := k.sess().Upload(name, r, k.limit)
	return File{Name: fi.Name, Size: fi.Size}, err
}

func (k *managerKernel) Close() error { return k.m.Delete(k.sess().ID(), k.owner) }

// Remote is the Backend of a running gateway, reached through the client
// SDK with the client's key; owners are ignored (the key is the owner).
type Remote struct{ C *client.Client }

// Execute implements Backend.
func (b Remote) Execute(ctx context.Context, owner string, req codegw.ExecuteRequest, out Stream) (*codegw.ExecuteResult, error) {
	return b.C.ExecuteStream(ctx, req, out.handler())
}

// Open implements Backend.
func (b Remote) Open(ctx context.Context, owner string) (Kernel, error) {
	s, err := b.C.CreateSession(ctx, client.SessionOptions{})
	if err != nil {
		return nil, err
	}
	return &remoteKernel{current[*client.Session]{s: s}}, nil
}

type remoteKernel struct {
	current[*client.Session]
}

func (k *remoteKernel) Checkpoint(ctx context.Context) (codegw.Snapshot, error) {
	return k.sess().Checkpoint(ctx)
}

func (k *remoteKernel) Restore(ctx context.Context, snapshot string) (*codegw.Restored, error) {
	s, err := k.sess().Client().CreateSession(ctx, client.SessionOptions{FromSnapshot: snapshot})
	if err != nil {
		return nil, err
	}
	k.swap(s).Delete(ctx)
	return s.Restored, nil
}

func (k *remoteKernel) Execute(ctx context.Context, req codegw.ExecuteRequest, out Stream) (*codegw.ExecuteResult, error) {
	stop := context.AfterFunc(ctx, func() { k.sess().Interrupt(context.Background()) })
	defer stop()
	return k.sess().ExecuteStream(context.WithoutCancel(ctx), req, out.handler())
}

func (k *remoteKernel) Restart(ctx context.Context) error { return k.sess().Restart(ctx) }

func (k *remoteKernel) Files(ctx context.Context) ([]File, error) {
	list, err := k.sess().Files(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]File, len(list))
	for i, f := range list {
		out[i] = File{Name: f.Name, Size: f.Size, URL: f.URL}
	}
	return out, nil
}

func (k *remoteKernel) Read(ctx context.Context, name string, w io.Writer) (int64, error) {
	return k.sess().Download(ctx, name, w)
}

func (k *remoteKernel) Upload(ctx context.Context, name string, r io.Reader) (File, error) {
	fi, err := k.sess().Upload(ctx, name, r)
	return File{Name: fi.Name, Size: fi.Size, URL: fi.URL}, err
}

func (k *remoteKernel) Close() error { return k.sess().Delete(context.Background()) }
