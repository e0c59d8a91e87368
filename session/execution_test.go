package session

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/codegw/codegw"
	"github.com/codegw/codegw/kernel"
)

// testExecution is an execution with maxOutput bytes of budget, not bound
// to a kernel: its messages are fed by hand.
func testExecution(maxOutput int, emit func(codegw.Event)) *execution {
	m := &Manager{cfg: Config{MaxOutputBytes: maxOutput}}
	return m.newExecution("e1", codegw.ExecuteRequest{}, "", emit)
}

// feed hands x a kernel message of type typ with content c.
func feed(x *execution, typ string, c any) {
	b, _ := json.Marshal(c)
	x.onMessage(&kernel.Message{Header: kernel.Header{MsgType: typ}, Content: b})
}

func TestFinishStatus(t *testing.T) {
	ok := &kernel.ExecuteReply{Status: "ok", ExecutionCount: 3}
	raised := &kernel.ExecuteReply{Status: "error", EName: "NameError", EValue: "name 'x' is not defined"}
	kbd := &kernel.ExecuteReply{Status: "error", EName: "KeyboardInterrupt"}
	died := fmt.Errorf("%w: the kernel process was killed by signal: segmentation fault", kernel.ErrDied)
	cases := []struct {
		name      string
		o         outcome
		traceback []string // an iopub error message before the reply
		status    codegw.Status
		errHas    string // "" means no error at all
	}{
		{"ok", outcome{reply: ok}, nil, codegw.StatusOK, ""},
		{"raised, traceback on iopub", outcome{reply: raised}, []string{"Traceback", "\x1b[31mNameError\x1b[0m: boom"}, codegw.StatusError, "Traceback\nNameError: boom"},
		{"raised, reply only", outcome{reply: raised}, nil, codegw.StatusError, "NameError: name 'x' is not defined"},
		{"KeyboardInterrupt after an interrupt", outcome{reply: kbd, interrupted: true}, nil, codegw.StatusInterrupted, "execution interrupted"},
		{"KeyboardInterrupt raised by the code", outcome{reply: kbd}, nil, codegw.StatusError, "KeyboardInterrupt"},
		{"deadline passed", outcome{err: &kernel.DeadlineError{Timeout: 3 * time.Second}}, nil, codegw.StatusTimeout, "timed out after 3s"},
		{"deadline passed, killed", outcome{err: &kernel.DeadlineError{Timeout: time.Second, Killed: true}}, nil, codegw.StatusTimeout, "was killed"},
		{"caller cancelled", outcome{err: &kernel.DeadlineError{}}, nil, codegw.StatusInterrupted, "cancelled"},
		{"died", outcome{err: died, exited: true, exit: kernel.Exit{Code: -1, Signal: "segmentation fault"}}, nil, codegw.StatusDied, "the kernel died: the kernel process was killed by signal: segmentation fault; its state is lost"},
		{"oom", outcome{err: died, exited: true, exit: kernel.Exit{OOMKilled: true}}, nil, codegw.StatusOOM, "out of memory"},
		{"died at the pids limit", outcome{err: died, exited: true, exit: kernel.Exit{PidsLimited: true}}, nil, codegw.StatusPidsLimit, "process limit and died"},
		{"forks refused, ok", outcome{reply: ok, pidsRefused: 2}, nil, codegw.StatusPidsLimit, "2 fork(s) or thread(s) were refused"},
		{"forks refused, raised", outcome{reply: raised, pidsRefused: 1}, nil, codegw.StatusPidsLimit, "were refused\nNameError: name 'x'"},
		{"forks refused, timeout", outcome{err: &kernel.DeadlineError{Timeout: time.Second}, pidsRefused: 1}, nil, codegw.StatusTimeout, "timed out"},
		{"other error", outcome{err: errors.New("shell channel: EOF")}, nil, codegw.StatusError, "execution failed: shell channel: EOF"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			x := testExecution(1<<20, nil)
			if tc.traceback != nil {
				feed(x, "error", map[string]any{"ename": "NameError", "evalue": "boom", "traceback": tc.traceback})
			}
			tc.o.took = 1500 * time.Millisecond
			x.finish(tc.o)
			res := x.res
			if res.Status != tc.status {
				t.Errorf("status %q, want %q", res.Status, tc.status)
			}
			switch {
			case tc.errHas == "" && res.Error != nil:
				t.Errorf("error %q, want none", *res.Error)
			case tc.errHas != "" && (res.Error == nil || !strings.Contains(*res.Error, tc.errHas)):
				t.Errorf("error %v, want it to contain %q", strOrNil(res.Error), tc.errHas)
			}
			if res.ExecutionTime != 1.5 || res.Outputs == nil || res.Images == nil {
				t.Errorf("time %v outputs %v images %v", res.ExecutionTime, res.Outputs, res.Images)
			}
		})
	}
}

func strOrNil(s *string) string {
	if s == nil {
		return "<nil>"
	}
	return *s
}

// answerText is the JSON weight of every text the answer carries, the
// fixed frame aside: the budget's notes and the exception name they repeat.
func answerText(res *codegw.ExecuteResult) int {
	n := 0
	msg := strOrNil(res.Error)
	if msg == res.EName+"\n"+truncatedNote {
		msg = ""
	}
	for _, s := range []string{res.Stdout, res.Stderr, res.Result, msg, res.EName, res.EValue} {
		s = strings.NewReplacer("\n"+truncatedNote, "", truncatedNote, "", "<nil>", "").Replace(s)
		n += jsonLen(s)
	}
	for _, l := range res.Traceback {
		n += jsonLen(l) + lineFrame
	}
	for _, o := range res.Outputs {
		n += jsonLen(o.Data) + jsonLen(o.Text) + outputFrame
	}
	return n
}

func TestOutputBudget(t *testing.T) {
	html := "<table>" + strings.Repeat("<tr><td>1</td></tr>", 50) + "</table>"
	type msg struct {
		typ string
		c   any
	}
	stream := func(name, text string) msg { return msg{"stream", map[string]string{"name": name, "text": text}} }
	display := func(typ string, data map[string]string) msg { return msg{typ, map[string]any{"data": data}} }
	cases := []struct {
		name      string
		max       int
		msgs      []msg
		reply     *kernel.ExecuteReply
		stdout    string
		result    string
		mimes     string // of the outputs, in order
		errHas    string
		truncated bool
	}{
		{
			name: "everything fits", max: 1 << 20,
			msgs:   []msg{stream("stdout", "  out  \n"), display("execute_result", map[string]string{"text/plain": "42"})},
			stdout: "  out  \n", result: "out\n42", mimes: "text/plain",
		},
		{
			name: "something cut: result says so", max: outputFrame + 20,
			msgs:   []msg{stream("stdout", "out\n"), display("display_data", map[string]string{"text/html": html, "text/plain": "df"})},
			stdout: "out\n", result: "out\n" + truncatedNote, mimes: "text/plain", truncated: true,
		},
		{
			name: "stdout fills the budget: result is the note, not a second copy", max: 100,
			msgs:   []msg{stream("stdout", strings.Repeat("x", 60)), stream("stdout", strings.Repeat("y", 60)), display("execute_result", map[string]string{"text/plain": "42"})},
			stdout: strings.Repeat("x", 60) + strings.Repeat("y", 40), result: truncatedNote, mimes: "", truncated: true,
		},
		{
			name: "result gets what is left", max: 100,
			msgs:   []msg{stream("stdout", strings.Repeat("x", 70))},
			stdout: strings.Repeat("x", 70), result: strings.Repeat("x", 30) + "\n" + truncatedNote, truncated: true,
		},
		{
			name: "rich data kept whole", max: 4 << 10,
			msgs:   []msg{display("display_data", map[string]string{"text/html": html, "text/plain": "df"})},
			result: "", mimes: "text/html",
		},
		{
			name: "rich data too big falls back to its text", max: 400,
			msgs:   []msg{display("execute_result", map[string]string{"text/html": html, "text/plain": "   a\n0  1"})},
			result: "   a\n0  1\n" + truncatedNote, mimes: "text/plain", truncated: true,
		},
		{
			name: "its text is cut too", max: outputFrame + 5,
			msgs:   []msg{display("display_data", map[string]string{"text/html": html, "text/plain": strings.Repeat("t", 50)})},
			result: truncatedNote, mimes: "text/plain", truncated: true,
		},
		{
			name: "a flood of tiny displays stops at the budget", max: 3 * (outputFrame + 1),
			msgs:   []msg{display("display_data", map[string]string{"text/plain": "1"}), display("display_data", map[string]string{"text/plain": "2"}), display("display_data", map[string]string{"text/plain": "3"}), display("display_data", map[string]string{"text/plain": "4"})},
			result: truncatedNote, mimes: "text/plain,text/plain,text/plain", truncated: true,
		},
		{
			name: "a long traceback is cut, and so is error", max: 200,
			msgs:   []msg{stream("stderr", strings.Repeat("w", 50)), {"error", map[string]any{"ename": "E", "evalue": "v", "traceback": []string{strings.Repeat("a", 100), strings.Repeat("b", 100)}}}},
			reply:  &kernel.ExecuteReply{Status: "error", EName: "E", EValue: "v"},
			errHas: truncatedNote, result: truncatedNote, truncated: true,
		},
		{
			name: "error keeps the exception's name", max: 40,
			msgs:   []msg{{"error", map[string]any{"ename": "ValueError", "evalue": strings.Repeat("v", 100), "traceback": []string{"x"}}}},
			reply:  &kernel.ExecuteReply{Status: "error"},
			errHas: "ValueError\n" + truncatedNote, result: truncatedNote, truncated: true,
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var events []codegw.Event
			x := testExecution(tc.max, func(ev codegw.Event) { events = append(events, ev) })
			for _, m := range tc.msgs {
				feed(x, m.typ, m.c)
			}
			reply := tc.reply
			if reply == nil {
				reply = &kernel.ExecuteReply{Status: "ok"}
			}
			x.finish(outcome{reply: reply})
			res := &x.res
			var mimes []string
			for _, o := range res.Outputs {
				mimes = append(mimes, o.MIME)
			}
			if res.Stdout != tc.stdout && tc.stdout != "" || res.Result != tc.result || strings.Join(mimes, ",") != tc.mimes || res.Truncated != tc.truncated {
				t.Errorf("stdout %d bytes, result %q, outputs %v, truncated %v; want stdout %d bytes, result %q, outputs %s, truncated %v",
					len(res.Stdout), res.Result, mimes, res.Truncated, len(tc.stdout), tc.result, tc.mimes, tc.truncated)
			}
			if tc.errHas != "" && (res.Error == nil || !strings.Contains(*res.Error, tc.errHas)) {
				t.Errorf("error %q, want it to contain %q", strOrNil(res.Error), tc.errHas)
			}
			if n := answerText(res); n > tc.max {
				t.Errorf("the answer carries %d bytes of text; the budget is %d", n, tc.max)
			}
			// The events carry the same admitted text, and say once that
			// it was cut.
			streamed, told := 0, 0
			for _, ev := range events {
				streamed += jsonLen(ev.Text)
				if ev.Output != nil {
					streamed += jsonLen(ev.Output.Data) + jsonLen(ev.Output.Text)
				}
				if ev.State == "truncated" {
					told++
				}
			}
			if streamed > tc.max || told != map[bool]int{true: 1}[tc.truncated] {
				t.Errorf("events carry %d bytes of text and %d truncated notices", streamed, told)
			}
		})
	}
}
