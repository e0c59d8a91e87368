// Package testwait is how the project's tests wait for something to
// happen: a condition checked until it holds, or a deadline. Tests never
// sleep to let something happen; they wait here for the state that says it
// did (a session busy, a status, a file, a metric).
//
// The checks run at a short, growing interval (5 ms, doubling to 100 ms),
// so a fast event is seen at once and a slow one costs little CPU.
package testwait

import (
	"context"
	"testing"
	"time"
)

const (
	firstStep = 5 * time.Millisecond
	maxStep   = 100 * time.Millisecond
)

// Until checks cond until it holds, failing tb (t.Fatalf) after within.
// Call it from the test's goroutine.
func Until(tb testing.TB, within time.Duration, what string, cond func() bool) {
	tb.Helper()
	For(tb, within, what, func() string {
		if cond() {
			return ""
		}
		return "not yet"
	})
}

// For calls check until it returns "", failing tb after within with the
// last thing check said.
func For(tb testing.TB, within time.Duration, what string, check func() string) {
	tb.Helper()
	Every(tb, within, 0, what, check)
}

// Every is For with checks at most every step apart (0: the growing
// interval), for checks that are dear (a docker command, a cluster call).
func Every(tb testing.TB, within, step time.Duration, what string, check func() string) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), within)
	defer cancel()
	if msg := poll(ctx, step, check); msg != "" {
		tb.Fatalf("%s: not within %v: %s", what, within, msg)
	}
}

// Within checks cond until it holds or d passes, and returns its last
// answer: for tests that report a miss with t.Errorf and go on (to clean
// up what is left, say).
func Within(d time.Duration, cond func() bool) bool {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	return Poll(ctx, func() string {
		if cond() {
			return ""
		}
		return "no"
	}) == ""
}

// Poll calls check until it returns "" (Poll returns "") or ctx ends (Poll
// returns check's last answer). For goroutines that may not call t.Fatal.
func Poll(ctx context.Context, check func() string) string { return poll(ctx, 0, check) }

// PollEvery is Poll with checks step apart.
func PollEvery(ctx context.Context, step time.Duration, check func() string) string {
	return poll(ctx, step, check)
}

func poll(ctx context.Context, fixed time.Duration, check func() string) string {
	step := firstStep
	if fixed > 0 {
		step = fixed
	}
	t := time.NewTimer(0)
	defer t.Stop()
	<-t.C
	for {
		msg := check()
		if msg == "" {
			return ""
		}
		t.Reset(step)
		select {
		case <-ctx.Done():
			if msg = check(); msg == "" {
				return ""
			}
			return msg
		case <-t.C:
		}
		if fixed == 0 {
			step = min(2*step, maxStep)
		}
	}
}
