package gateway

import "sync/atomic"

// faultHook, when set (by tests only, through export_test.go), is called at
// named points of the goroutines that serve clients, so a test can make one
// of them panic and check that only its own connection or execution ends.
var faultHook atomic.Pointer[func(where string)]

// fault calls the fault hook, if any, at the point named where.
func fault(where string) {
	if f := faultHook.Load(); f != nil {
		(*f)(where)
	}
}
