package testwait

import (
	"context"
	"sync/atomic"
	"testing"
	"time"
)

func TestPollSeesTheChange(t *testing.T) {
	var n atomic.Int32
	go func() {
		for range 3 {
			n.Add(1)
		}
	}()
	Until(t, 5*time.Second, "three increments", func() bool { return n.Load() == 3 })
}

func TestPollGivesUpWithTheLastAnswer(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Millisecond)
	defer cancel()
	calls := 0
	start := time.Now()
	msg := Poll(ctx, func() string { calls++; return "still 0" })
	if msg != "still 0" {
		t.Errorf("Poll = %q, want the last answer", msg)
	}
	if d := time.Since(start); d < 30*time.Millisecond || d > 2*time.Second {
		t.Errorf("Poll returned after %v; want about 30 ms", d)
	}
	if calls < 3 || calls > 20 {
		t.Errorf("%d checks in 30 ms; want a few (growing interval)", calls)
	}
}
