package kernel

import (
	"context"
	"errors"
	"time"
)

// Spec says what kind of kernel a provisioner should start.
type Spec struct {
	// ID names the kernel; provisioners use it in directory and container
	// names. It must be unique among live kernels.
	ID string
	// Labels are attached where the provisioner can (container labels), so
	// that orphans can be found after a crash. "session" is the session id.
	Labels map[string]string
	// Env is extra environment for the kernel process.
	Env map[string]string
	// OneShot asks for a one-shot kernel (see OneShotter) where the
	// provisioner can make one (a zygote's child); elsewhere it starts a
	// full kernel. A one-shot kernel runs stateless cells only: no stdin,
	// comms, completion or restart.
	OneShot bool
}

// Exit describes how a kernel process ended.
type Exit struct {
	// Code is the exit status, or -1 when killed by a signal.
	Code int
	// Signal is the signal that killed it, if any (e.g. "killed", "segmentation fault").
	Signal string
	// OOMKilled is true when the kernel hit its memory limit.
	OOMKilled bool
	// PidsLimited is true when the kernel hit its process limit before it died.
	PidsLimited bool
}

// Process is one running kernel process (or container) started by a
// Provisioner. The Client talks to it over the endpoints in ConnectionInfo.
type Process interface {
	// ConnectionInfo is where the kernel listens and the key that signs messages.
	ConnectionInfo() ConnectionInfo
	// Dir is the host directory seen by the kernel as /code; it holds input/
	// and output/.
	Dir() string
	// Exited is closed when the current kernel process ends. After Restart it
	// returns a new channel for the new process.
	Exited() <-chan struct{}
	// Exit describes the end of the process; valid once Exited is closed.
	Exit() Exit
	// Kill ends the kernel process at once (SIGKILL), without cleanup.
	Kill(ctx context.Context) error
	// Restart kills the kernel process and starts a new one on the same
	// endpoints, key and directory. State is lost, files are kept.
	Restart(ctx context.Context) error
	// Close kills the kernel and removes everything the provisioner made for
	// it: processes, containers, socket files and directories. It is safe to
	// call more than once.
	Close(ctx context.Context) error
}

// Provisioner starts kernel processes. Implementations: kernel/local (a
// process in a bubblewrap sandbox) and kernel/docker (one container per
// kernel). A future fork-server would be a third.
type Provisioner interface {
	// Start starts a kernel and returns once its process is running; the
	// caller dials it and waits for readiness.
	Start(ctx context.Context, spec Spec) (Process, error)
	// Close releases the provisioner's own resources. It does not close the
	// processes it started.
	Close() error
}

// Reaper is implemented by provisioners that can find and remove kernels left
// behind by an earlier crash of this instance.
type Reaper interface {
	Reap(ctx context.Context) (int, error)
}

// ErrProvisioner is wrapped by errors from provisioners when the underlying
// runtime (the Python interpreter, bubblewrap, Docker) is unavailable.
var ErrProvisioner = errors.New("kernel provisioner unavailable")

// DefaultStartTimeout bounds the start of a kernel until it is ready.
const DefaultStartTimeout = 60 * time.Second
