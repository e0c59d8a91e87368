//go:build race

package gateway_test

// raceEnabled: the race detector's instrumentation changes what the heap
// holds, so memory bounds are checked looser under it.
const raceEnabled = true
