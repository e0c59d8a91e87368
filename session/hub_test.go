package session

import (
	"testing"

	"github.com/codegw/codegw"
)

func TestHubReplayAndGap(t *testing.T) {
	h := newHub(4)
	for i := 0; i < 6; i++ {
		h.publish(codegw.Event{Type: codegw.EventStream, Text: string(rune('a' + i))})
	}
	cases := []struct {
		name    string
		after   uint64
		replay  bool
		want    string
		wantGap bool
	}{
		{"no replay", 0, false, "", false},
		{"within the buffer", 3, true, "def", false},
		{"at the edge", 2, true, "cdef", false},
		{"past the buffer", 0, true, "cdef", true},
		{"older than the buffer", 1, true, "cdef", true},
		{"up to date", 6, true, "", false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s, missed, gap := h.subscribe(tc.after, tc.replay)
			defer s.Close()
			got := ""
			for i, ev := range missed {
				got += ev.Text
				if i > 0 && ev.Seq != missed[i-1].Seq+1 {
					t.Errorf("replay not contiguous: %v", missed)
				}
			}
			if got != tc.want || gap != tc.wantGap {
				t.Errorf("replay %q gap %v, want %q gap %v", got, gap, tc.want, tc.wantGap)
			}
		})
	}
}

func TestHubFanOutSlowSubscriberAndClose(t *testing.T) {
	h := newHub(8)
	fast, _, _ := h.subscribe(0, false)
	slow, _, _ := h.subscribe(0, false)
	for i := 0; i < subscriberBuffer+1; i++ {
		h.publish(codegw.Event{Type: codegw.EventStream})
		<-fast.C // fast drains; slow never does
	}
	if _, ok := <-drain(slow.C); ok {
		t.Fatal("slow subscriber was not dropped")
	}
	if slow.Reason() == "" {
		t.Error("dropped subscriber has no reason")
	}
	h.publish(codegw.Event{Type: codegw.EventClosed, Reason: "session deleted"})
	ev := <-fast.C
	if ev.Type != codegw.EventClosed {
		t.Fatalf("fast got %+v", ev)
	}
	if _, ok := <-fast.C; ok || fast.Reason() != "session deleted" {
		t.Errorf("fast not closed with the reason: %q", fast.Reason())
	}
	// A late subscriber of a closed hub is closed at once with the reason.
	late, _, _ := h.subscribe(0, false)
	if _, ok := <-late.C; ok || late.Reason() != "session deleted" {
		t.Errorf("late subscriber: %q", late.Reason())
	}
	fast.Close() // closing twice is harmless
}

// drain returns c once every buffered event has been read from it.
func drain(c chan codegw.Event) chan codegw.Event {
	for {
		select {
		case _, ok := <-c:
			if !ok {
				closed := make(chan codegw.Event)
				close(closed)
				return closed
			}
		default:
			return c
		}
	}
}

func TestPyString(t *testing.T) {
	for in, want := range map[string]string{
		`plain`:       `"plain"`,
		`q"uote\`:     `"q\"uote\\"`,
		"line\nbreak": `"line\nbreak"`,
		"ctl\x01":     `"ctl\x01"`,
		"中文":          `"中文"`,
	} {
		if got := pyString(in); got != want {
			t.Errorf("pyString(%q) = %s, want %s", in, got, want)
		}
	}
}
