package local

import (
	"os/exec"
	"runtime"
	"sync"
)

// spawner starts processes from one goroutine locked to its OS thread.
//
// Pdeathsig (and bwrap's --die-with-parent) fire when the *thread* that
// forked the child ends, not the process. Go ends a thread when a goroutine
// locked to it exits, so a child forked from an ordinary goroutine's thread
// could be killed at a random time by unrelated code. The spawner's thread
// is never handed back while it may have children.
type spawner struct {
	reqs chan spawnReq
	once sync.Once
	done chan struct{}
}

type spawnReq struct {
	cmd *exec.Cmd
	err chan error
}

func newSpawner() *spawner {
	s := &spawner{reqs: make(chan spawnReq), done: make(chan struct{})}
	go s.loop()
	return s
}

func (s *spawner) loop() {
	// Never unlocked: if the goroutine ever returned, the thread would end
	// with it and kill the children. It returns only when the provisioner is
	// closed, and then it stays parked instead (see stop).
	runtime.LockOSThread()
	for {
		select {
		case r := <-s.reqs:
			r.err <- r.cmd.Start()
		case <-s.done:
			// Keep the thread alive for the kernels still running: park
			// forever. One idle goroutine per closed provisioner is the price.
			select {}
		}
	}
}

// start runs cmd.Start on the spawner's thread.
func (s *spawner) start(cmd *exec.Cmd) error {
	r := spawnReq{cmd: cmd, err: make(chan error, 1)}
	select {
	case s.reqs <- r:
		return <-r.err
	case <-s.done:
		return errClosed
	}
}

func (s *spawner) stop() { s.once.Do(func() { close(s.done) }) }
