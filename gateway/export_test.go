package gateway

// SetFaultHook sets (nil: clears) the hook fault calls.
func SetFaultHook(f func(where string)) {
	if f == nil {
		faultHook.Store(nil)
		return
	}
	faultHook.Store(&f)
}
