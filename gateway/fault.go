package gateway

import (
	"sync/atomic"
	"time"

	"github.com/gofiber/contrib/websocket"
)

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

// closeInternal tells a websocket's client that a panic ended the
// connection (1011), as the recovery of each websocket goroutine does.
func closeInternal(ws interface {
	WriteControl(int, []byte, time.Time) error
}) {
	ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseInternalServerErr, "internal error"), time.Now().Add(time.Second))
}
