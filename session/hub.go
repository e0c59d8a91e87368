package session

import (
	"sync"

	"github.com/codegw/codegw"
)

// hub numbers a session's events, keeps the last ones for reconnecting
// clients and fans them out to every connected subscriber.
type hub struct {
	mu     sync.Mutex
	seq    uint64
	buf    []codegw.Event // ring of the last keep events, grown as they come
	keep   int
	start  int // index of the oldest event in buf
	subs   map[*Subscriber]struct{}
	closed *codegw.Event
}

// Subscriber receives a session's events on C. C is closed when the
// session ends or the subscriber falls too far behind; Reason says which.
type Subscriber struct {
	C      chan codegw.Event
	h      *hub
	mu     sync.Mutex
	reason string
}

// subscriberBuffer is how many events a subscriber may lag behind before
// it is dropped; it can reconnect and replay from its last seq.
const subscriberBuffer = 256

func newHub(keep int) *hub {
	return &hub{keep: keep, subs: make(map[*Subscriber]struct{})}
}

// publish numbers ev and delivers it. It never blocks.
func (h *hub) publish(ev codegw.Event) codegw.Event {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed != nil {
		return ev
	}
	h.seq++
	ev.Seq = h.seq
	if len(h.buf) < h.keep {
		h.buf = append(h.buf, ev)
	} else if h.keep > 0 {
		h.buf[h.start] = ev
		h.start = (h.start + 1) % h.keep
	}
	for s := range h.subs {
		select {
		case s.C <- ev:
		default:
			h.drop(s, "client too slow; reconnect with last_seq to resume")
		}
	}
	if ev.Type == codegw.EventClosed {
		h.closed = &ev
		for s := range h.subs {
			h.drop(s, ev.Reason)
		}
	}
	return ev
}

func (h *hub) drop(s *Subscriber, reason string) {
	delete(h.subs, s)
	s.mu.Lock()
	s.reason = reason
	s.mu.Unlock()
	close(s.C)
}

// subscribe returns a subscriber and, with replay, the buffered events
// after seq `after` (none without replay). gap is true when events after
// `after` were already dropped from the buffer.
func (h *hub) subscribe(after uint64, replay bool) (s *Subscriber, missed []codegw.Event, gap bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	s = &Subscriber{C: make(chan codegw.Event, subscriberBuffer), h: h}
	if replay {
		n := len(h.buf)
		for i := 0; i < n; i++ {
			ev := h.buf[(h.start+i)%n]
			if ev.Seq > after {
				missed = append(missed, ev)
			}
		}
		oldest := h.seq + 1
		if n > 0 {
			oldest = h.buf[h.start].Seq
		}
		gap = after+1 < oldest && after < h.seq
	}
	if h.closed != nil {
		s.reason = h.closed.Reason
		close(s.C)
		return s, missed, gap
	}
	h.subs[s] = struct{}{}
	return s, missed, gap
}

// Close unsubscribes.
func (s *Subscriber) Close() {
	s.h.mu.Lock()
	defer s.h.mu.Unlock()
	if _, ok := s.h.subs[s]; ok {
		delete(s.h.subs, s)
		close(s.C)
	}
}

// Reason says why C was closed.
func (s *Subscriber) Reason() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.reason
}

func (h *hub) lastSeq() uint64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.seq
}
