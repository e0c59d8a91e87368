package codegw

import (
	"context"
	"fmt"
	"log/slog"
	"runtime/debug"
	"sort"
	"sync"
	"sync/atomic"
)

// PanicError is what a recovered panic becomes: the place it happened, the
// value it carried and the goroutine's stack. Callers show it as an
// internal error (its code is EINTERNAL); the stack goes to the log only.
type PanicError struct {
	Where string
	Value any
	Stack []byte
}

// Error names the place and the value.
func (e *PanicError) Error() string { return fmt.Sprintf("panic in %s: %v", e.Where, e.Value) }

var panicCounts sync.Map // where -> *atomic.Int64

// Recover, deferred first in every goroutine that serves a client or reads
// what a kernel sends, turns a panic into an error for that connection or
// execution alone: it logs the panic with its stack and ctx's ids, counts
// it under where (PanicCounts, exported as codegw_panics_total) and calls
// onPanic, which ends what the goroutine served and releases what it held.
// Without a panic it does nothing. It must be deferred directly:
//
//	defer codegw.Recover(ctx, "session websocket reader", func(err error) { conn.Close() })
func Recover(ctx context.Context, where string, onPanic func(err error)) {
	v := recover()
	if v == nil {
		return
	}
	err := &PanicError{Where: where, Value: v, Stack: debug.Stack()}
	c, _ := panicCounts.LoadOrStore(where, new(atomic.Int64))
	c.(*atomic.Int64).Add(1)
	if ctx == nil {
		ctx = context.Background()
	}
	slog.ErrorContext(ctx, "panic recovered", "where", where, "panic", fmt.Sprint(v), "stack", string(err.Stack))
	if onPanic != nil {
		onPanic(err)
	}
}

// PanicCount is the number of panics recovered at one place.
type PanicCount struct {
	Where string
	N     int64
}

// PanicCounts returns how many panics Recover caught, by place, sorted.
func PanicCounts() []PanicCount {
	var out []PanicCount
	panicCounts.Range(func(k, v any) bool {
		out = append(out, PanicCount{Where: k.(string), N: v.(*atomic.Int64).Load()})
		return true
	})
	sort.Slice(out, func(i, j int) bool { return out[i].Where < out[j].Where })
	return out
}

// PanicErr is the caller-safe form of a recovered panic: an internal error.
func PanicErr(err error) *Error {
	return WrapError(EINTERNAL, err, "Internal error.")
}
