package kernel

import (
	"fmt"
	"sync"
	"time"

	"github.com/go-zeromq/zmq4"

	"github.com/codegw/codegw"
)

// The heartbeat catches a kernel that is alive but frozen (stopped, stuck
// in C code with the GIL held, swapped out): a process that exits is told
// at once by the provisioner. So only kernels that serve a caller are
// pinged — a kernel waiting in the pool is not (see Kernel.Park) — and all
// of them by one goroutine with one timer, which sleeps without a timer
// when no kernel is watched. Each client's own heartbeat goroutine sleeps in
// Recv; it is woken to send a ping and by the pong, nothing else.

// beats is the process's one heartbeat scheduler.
var beats = &heartbeats{clients: map[*Client]*beat{}, wake: make(chan struct{}, 1)}

// heartbeats pings the watched clients and fails those whose pong is late.
type heartbeats struct {
	mu      sync.Mutex
	clients map[*Client]*beat
	running bool
	wake    chan struct{} // a client was added: its deadlines may be earlier
}

// beat is one watched client's schedule.
type beat struct {
	next time.Time // when to ping next
}

// watch starts watching c: its next ping is one interval from now, and its
// timeout counts from now.
func (h *heartbeats) watch(c *Client) {
	now := time.Now()
	c.lastPong.Store(now.UnixNano())
	h.mu.Lock()
	h.clients[c] = &beat{next: now.Add(c.opts.HeartbeatInterval)}
	if !h.running {
		h.running = true
		go h.loop()
	}
	h.mu.Unlock()
	select {
	case h.wake <- struct{}{}:
	default:
	}
}

// unwatch stops watching c.
func (h *heartbeats) unwatch(c *Client) {
	h.mu.Lock()
	delete(h.clients, c)
	h.mu.Unlock()
}

// coalesce is how early a ping may go so that it goes out with another
// client's: clients started at different times share the timer's wake-ups.
const coalesce = 4

// loop runs while clients are watched; it ends when none is left and is
// started again by the next watch.
func (h *heartbeats) loop() {
	t := time.NewTimer(time.Hour)
	defer t.Stop()
	for {
		now := time.Now()
		var (
			next  time.Time
			fails []*Client
		)
		h.mu.Lock()
		if len(h.clients) == 0 {
			h.running = false
			h.mu.Unlock()
			return
		}
		for c, b := range h.clients {
			interval := c.opts.HeartbeatInterval
			if now.Sub(time.Unix(0, c.lastPong.Load())) > c.opts.HeartbeatTimeout {
				delete(h.clients, c)
				fails = append(fails, c)
				continue
			}
			if !b.next.After(now.Add(interval / coalesce)) {
				select {
				case c.ping <- struct{}{}:
				default: // the last ping is unanswered: the timeout will tell
				}
				b.next = now.Add(interval)
			}
			// The timeout is checked at the next ping's time: at most one
			// interval late.
			if next.IsZero() || b.next.Before(next) {
				next = b.next
			}
		}
		h.mu.Unlock()
		for _, c := range fails {
			late := now.Sub(time.Unix(0, c.lastPong.Load()))
			c.Fail(fmt.Errorf("no heartbeat for %v", late.Round(time.Millisecond)))
		}
		t.Reset(time.Until(next))
		select {
		case <-t.C:
		case <-h.wake: // Reset discards a pending fire (Go 1.23 timers)
		}
	}
}

// pinger is a client's heartbeat goroutine: it sends a ping when the
// scheduler asks and records each pong. It owns the REQ socket.
func (c *Client) pinger() {
	defer c.wg.Done()
	defer codegw.Recover(c.ctx, "kernel heartbeat", func(err error) { c.Fail(err) })
	for {
		select {
		case <-c.ctx.Done():
			return
		case <-c.ping:
		}
		if err := c.hb.Send(zmq4.NewMsg([]byte("ping"))); err != nil {
			return
		}
		if _, err := c.hb.Recv(); err != nil {
			return
		}
		c.lastPong.Store(time.Now().UnixNano())
	}
}

// Heartbeat turns the watch of the kernel's heartbeat on or off. While it
// is on, a kernel that does not answer for HeartbeatTimeout is declared
// dead (and Kernel kills it). Dial leaves it off; Kernel turns it on for a
// kernel that serves a caller. It does nothing when HeartbeatTimeout is
// negative.
func (c *Client) Heartbeat(on bool) {
	if c.opts.HeartbeatTimeout < 0 || c.one != nil {
		return
	}
	c.mu.Lock()
	dead := c.deadErr != nil
	c.mu.Unlock()
	if on && !dead {
		beats.watch(c)
	} else {
		beats.unwatch(c)
	}
}
