package session

import (
	"errors"
	"testing"
	"time"

	"github.com/codegw/codegw"
)

func TestAdmission(t *testing.T) {
	a := &admission{maxExec: 2, kernelMem: 256 << 20, maxMem: 512 << 20, use: map[string]*keyUse{}}
	limitOf := func(err error) (string, time.Duration) {
		var le *LimitError
		if !errors.As(err, &le) || codegw.ErrorCode(err) != codegw.ELIMIT {
			t.Fatalf("error %v; want a *LimitError with code %s", err, codegw.ELIMIT)
		}
		return le.Limit, le.RetryAfter
	}

	t.Run("executions per key", func(t *testing.T) {
		r1, err1 := a.holdExecution("a")
		r2, err2 := a.holdExecution("a")
		if err1 != nil || err2 != nil {
			t.Fatalf("two executions: %v, %v", err1, err2)
		}
		_, err := a.holdExecution("a")
		if l, retry := limitOf(err); l != "concurrency" || retry != time.Second {
			t.Errorf("third execution: limit %q retry %v", l, retry)
		}
		if r, err := a.holdExecution("b"); err != nil {
			t.Errorf("another key: %v", err)
		} else {
			r()
		}
		r1()
		r1() // a second release gives nothing more back
		if r, err := a.holdExecution("a"); err != nil {
			t.Errorf("after a release: %v", err)
		} else {
			r()
		}
		r2()
		if len(a.use) != 0 || a.running != 0 {
			t.Errorf("after every release: use %v, running %d; want nothing", a.use, a.running)
		}
	})
	t.Run("kernel memory per key", func(t *testing.T) {
		session, err := a.holdKernel("a", false)
		if err != nil {
			t.Fatal(err)
		}
		stateless, err := a.holdKernel("a", true)
		if err != nil {
			t.Fatal(err)
		}
		_, err = a.holdKernel("a", false)
		if l, retry := limitOf(err); l != "memory" || retry != time.Second {
			t.Errorf("past the total with a stateless execution running: limit %q retry %v; want memory, 1s", l, retry)
		}
		stateless()
		session2, err := a.holdKernel("a", false)
		if err != nil {
			t.Fatalf("after the stateless execution: %v", err)
		}
		_, err = a.holdKernel("a", true)
		if l, retry := limitOf(err); l != "memory" || retry != 30*time.Second {
			t.Errorf("past the total with sessions only: limit %q retry %v; want memory, 30s", l, retry)
		}
		session()
		session2()
		if len(a.use) != 0 {
			t.Errorf("after every release: %v", a.use)
		}
	})
	t.Run("drain", func(t *testing.T) {
		a.draining = true
		defer func() { a.draining = false }()
		for name, hold := range map[string]func() (func(), error){
			"execution": func() (func(), error) { return a.holdExecution("a") },
			"kernel":    func() (func(), error) { return a.holdKernel("a", false) },
		} {
			if _, err := hold(); codegw.ErrorCode(err) != codegw.EUNAVAILABLE {
				t.Errorf("%s while draining: %v; want %s", name, err, codegw.EUNAVAILABLE)
			}
		}
	})
	t.Run("unlimited", func(t *testing.T) {
		u := &admission{use: map[string]*keyUse{}}
		var rs []func()
		for range 100 {
			r1, err1 := u.holdExecution("a")
			r2, err2 := u.holdKernel("a", true)
			if err1 != nil || err2 != nil {
				t.Fatalf("no limits set: %v, %v", err1, err2)
			}
			rs = append(rs, r1, r2)
		}
		for _, r := range rs {
			r()
		}
		if len(u.use) != 0 {
			t.Errorf("after every release: %v", u.use)
		}
	})
}

// TestIdleSignals: the drain's one count says when it reaches zero, for
// executions, answers and workers alike, and a new hold makes a new wait.
func TestIdleSignals(t *testing.T) {
	var a admission
	a.use = map[string]*keyUse{}
	select {
	case <-a.idleChan():
	default:
		t.Fatal("idle not signalled with nothing running")
	}
	relX, err := a.holdExecution("k")
	if err != nil {
		t.Fatal(err)
	}
	relA, err := a.holdAnswer()
	if err != nil {
		t.Fatal(err)
	}
	relW := a.track()
	idle := a.idleChan()
	for i, rel := range []func(){relX, relA, relA, relW} {
		select {
		case <-idle:
			t.Fatalf("idle signalled with work running (after %d releases)", i)
		default:
		}
		rel()
	}
	select {
	case <-idle:
	default:
		t.Fatal("idle not signalled after every release")
	}
	relX()
	if a.running != 0 {
		t.Fatalf("running = %d after double releases, want 0", a.running)
	}
	rel2, _ := a.holdAnswer()
	select {
	case <-a.idleChan():
		t.Fatal("a new hold did not make a new wait")
	default:
	}
	a.draining = true
	if _, err := a.holdAnswer(); err == nil {
		t.Fatal("holdAnswer while draining: no error")
	}
	rel2()
	select {
	case <-a.idleChan():
	default:
		t.Fatal("idle not signalled while draining with nothing running")
	}
}
