package session

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"time"

	"github.com/codegw/codegw"
	"github.com/codegw/codegw/kernel"
)

// ansi matches the colour escapes IPython puts in tracebacks.
var ansi = regexp.MustCompile(`\x1b\[[0-9;]*[A-Za-z]`)

// StripANSI removes terminal colour codes.
func StripANSI(s string) string {
	if !strings.Contains(s, "\x1b") {
		return s
	}
	return ansi.ReplaceAllString(s, "")
}

// richMIMEs are the representations kept as outputs, best first. Images are
// stored and linked; the others are returned as text.
var richMIMEs = []string{"image/png", "image/svg+xml", "image/jpeg", "text/html", "text/markdown", "text/latex", "application/json"}

// run is one execution in progress: it turns kernel messages into events
// and accumulates the answer, within the output limits.
type run struct {
	m      *Manager
	id     string
	inline bool
	emit   func(codegw.Event)

	res      codegw.ExecuteResult
	stdout   strings.Builder
	stderr   strings.Builder
	outBytes int
	result   string // text/plain of execute_result
}

func (r *run) send(ev codegw.Event) {
	if r.emit != nil {
		ev.ExecutionID = r.id
		r.emit(ev)
	}
}

func (r *run) onMessage(msg *kernel.Message) {
	switch msg.Header.MsgType {
	case "stream":
		if r.outBytes >= r.m.cfg.MaxOutputBytes { // past the budget: not even decoded
			r.res.Truncated = true
			return
		}
		var c struct {
			Name string `json:"name"`
			Text string `json:"text"`
		}
		if json.Unmarshal(msg.Content, &c) != nil {
			return
		}
		text, cut := r.take(c.Text)
		if text != "" {
			if c.Name == "stderr" {
				r.stderr.WriteString(text)
			} else {
				r.stdout.WriteString(text)
			}
			r.send(codegw.Event{Type: codegw.EventStream, Name: c.Name, Text: text})
		}
		if cut {
			r.send(codegw.Event{Type: codegw.EventStatus, State: "truncated", Reason: fmt.Sprintf("output past %d bytes is dropped", r.m.cfg.MaxOutputBytes)})
		}
	case "display_data", "execute_result", "update_display_data":
		var c struct {
			Data      map[string]json.RawMessage `json:"data"`
			Transient struct {
				DisplayID string `json:"display_id"`
			} `json:"transient"`
		}
		if json.Unmarshal(msg.Content, &c) != nil {
			return
		}
		out := r.output(msg.Header.MsgType, c.Data)
		if out == nil {
			return
		}
		out.DisplayID = c.Transient.DisplayID
		if msg.Header.MsgType == "execute_result" {
			r.result = out.Text
		}
		ev := codegw.Event{Type: codegw.EventDisplay, Output: out}
		if msg.Header.MsgType == "execute_result" {
			ev.Type = codegw.EventResult
		}
		stored := *out
		if !r.inline && strings.HasPrefix(out.MIME, "image/") && out.URL != "" {
			stored.Data = ""
		}
		r.res.Outputs = append(r.res.Outputs, stored)
		r.send(codegw.Event{Type: ev.Type, Output: &stored})
	case "clear_output":
		r.send(codegw.Event{Type: codegw.EventStatus, State: "clear_output"})
	case "error":
		var c struct {
			EName     string   `json:"ename"`
			EValue    string   `json:"evalue"`
			Traceback []string `json:"traceback"`
		}
		if json.Unmarshal(msg.Content, &c) != nil {
			return
		}
		for i := range c.Traceback {
			c.Traceback[i] = StripANSI(c.Traceback[i])
		}
		r.res.EName, r.res.EValue, r.res.Traceback = c.EName, c.EValue, c.Traceback
		r.send(codegw.Event{Type: codegw.EventError, EName: c.EName, EValue: c.EValue, Traceback: c.Traceback})
	}
}

// take admits text within the output budget, reporting whether it cut.
func (r *run) take(text string) (string, bool) {
	left := r.m.cfg.MaxOutputBytes - r.outBytes
	if left <= 0 {
		r.res.Truncated = true
		return "", false
	}
	if len(text) <= left {
		r.outBytes += len(text)
		return text, false
	}
	text = validUTF8Prefix(text, left)
	r.outBytes = r.m.cfg.MaxOutputBytes
	r.res.Truncated = true
	return text, true
}

func validUTF8Prefix(s string, n int) string {
	if n >= len(s) {
		return s
	}
	for n > 0 && n < len(s) && s[n]&0xC0 == 0x80 {
		n--
	}
	return s[:n]
}

// output picks the best representation of a display message. Images go to
// the image store; their URL is returned (and the base64 when inline).
func (r *run) output(typ string, data map[string]json.RawMessage) *codegw.Output {
	out := &codegw.Output{Type: typ}
	if raw, ok := data["text/plain"]; ok {
		var s string
		if json.Unmarshal(raw, &s) == nil {
			out.Text = s
		}
	}
	for _, mime := range richMIMEs {
		raw, ok := data[mime]
		if !ok {
			continue
		}
		out.MIME = mime
		var s string
		if mime == "application/json" || json.Unmarshal(raw, &s) != nil {
			s = string(raw)
		}
		switch mime {
		case "image/png", "image/jpeg":
			b, err := base64.StdEncoding.DecodeString(strings.TrimSpace(s))
			if err != nil {
				out.MIME = "" // not an image after all; fall back to text
				continue
			}
			r.storeImage(out, ext(mime), b)
			if r.inline {
				out.Data = s
			}
		case "image/svg+xml":
			r.storeImage(out, "svg", []byte(s))
			if r.inline {
				out.Data = base64.StdEncoding.EncodeToString([]byte(s))
			}
		default:
			out.Data = s
		}
		return out
	}
	if out.Text == "" {
		return nil
	}
	out.MIME = "text/plain"
	return out
}

func ext(mime string) string {
	if mime == "image/jpeg" {
		return "jpg"
	}
	return "png"
}

func (r *run) storeImage(out *codegw.Output, ext string, b []byte) {
	if len(r.res.Images) >= r.m.cfg.MaxImages || len(b) > r.m.cfg.MaxImageBytes {
		r.res.Truncated = true
		return
	}
	name, err := r.m.cfg.Images.PutBytes(ext, b)
	if err != nil {
		r.m.log.Error("store image", "execution", r.id, "err", err)
		return
	}
	out.URL = r.m.cfg.Images.URL(name)
	r.res.Images = append(r.res.Images, out.URL)
}

// finish fills the answer from the reply or error of the kernel call.
func (r *run) finish(k *kernel.Kernel, reply *kernel.ExecuteReply, err error, interrupted bool, took time.Duration) {
	res := &r.res
	res.Stdout, res.Stderr = r.stdout.String(), r.stderr.String()
	res.Result = strings.TrimSpace(res.Stdout)
	if r.result != "" {
		if res.Result != "" {
			res.Result += "\n"
		}
		res.Result += r.result
	}
	res.ExecutionTime = took.Seconds()
	if reply != nil {
		res.ExecutionCount = reply.ExecutionCount
	}
	var de *kernel.DeadlineError
	msg := ""
	switch {
	case errors.As(err, &de) && de.Timeout > 0:
		res.Status = codegw.StatusTimeout
		msg = de.Error()
	case errors.As(err, &de):
		res.Status = codegw.StatusInterrupted
		msg = de.Error()
	case errors.Is(err, kernel.ErrDied):
		res.Status, msg = deathStatus(k, err)
	case err != nil:
		res.Status = codegw.StatusError
		msg = "execution failed: " + err.Error()
	case reply.Status == "ok":
		res.Status = codegw.StatusOK
	case reply.EName == "KeyboardInterrupt" && interrupted:
		res.Status = codegw.StatusInterrupted
		msg = "execution interrupted"
	default:
		res.Status = codegw.StatusError
		if res.EName == "" {
			res.EName, res.EValue = reply.EName, reply.EValue
		}
		if len(res.Traceback) > 0 {
			msg = strings.Join(res.Traceback, "\n")
		} else {
			msg = fmt.Sprintf("%s: %s", res.EName, res.EValue)
		}
	}
	if res.Status != codegw.StatusOK {
		if msg == "" {
			msg = string(res.Status)
		}
		res.Error = &msg
	}
	if len(res.Images) > 0 {
		res.ImageURL = &res.Images[0]
	}
	if res.Outputs == nil {
		res.Outputs = []codegw.Output{}
	}
	if res.Images == nil {
		res.Images = []string{}
	}
}

// deathStatus names how the kernel died: out of memory, its process limit,
// or anything else.
func deathStatus(k *kernel.Kernel, err error) (codegw.Status, string) {
	exit, ok := k.Exit()
	switch {
	case ok && exit.OOMKilled:
		return codegw.StatusOOM, "the kernel ran out of memory and was killed; its state is lost"
	case ok && exit.PidsLimited:
		return codegw.StatusPidsLimit, "the kernel hit its process limit and died; its state is lost"
	}
	return codegw.StatusDied, "the kernel died: " + strings.TrimPrefix(err.Error(), kernel.ErrDied.Error()+": ") + "; its state is lost"
}

// execute runs one request on k, emitting events as they happen, and
// returns the answer. outDir is the host side of /code/output.
func (m *Manager) execute(ctx context.Context, k *kernel.Kernel, execID string, req codegw.ExecuteRequest, code string, emit func(codegw.Event), onInput func(context.Context, kernel.InputRequest) (string, error), interrupted func() bool) *codegw.ExecuteResult {
	r := &run{m: m, id: execID, inline: req.InlineImages, emit: emit}
	timeout := m.cfg.ExecTimeout
	if req.Timeout > 0 && time.Duration(req.Timeout*float64(time.Second)) < timeout {
		timeout = time.Duration(req.Timeout * float64(time.Second))
	}
	start := time.Now()
	pids, _ := k.Process().(pidsCounter)
	var refused int64
	if pids != nil {
		refused = pids.PidsLimitHits()
	}
	r.send(codegw.Event{Type: codegw.EventStatus, State: "busy"})
	reply, err := k.Execute(ctx, code, kernel.ExecuteOptions{OnMessage: r.onMessage, OnInput: onInput, StoreHistory: true}, kernel.Deadline{Timeout: timeout, Grace: m.cfg.InterruptGrace})
	r.finish(k, reply, err, interrupted != nil && interrupted(), time.Since(start))
	if pids != nil && (r.res.Status == codegw.StatusOK || r.res.Status == codegw.StatusError) {
		if n := pids.PidsLimitHits() - refused; n > 0 {
			msg := fmt.Sprintf("the code hit the process limit: %d fork(s) or thread(s) were refused", n)
			if r.res.Error != nil {
				msg += "\n" + *r.res.Error
			}
			r.res.Status, r.res.Error = codegw.StatusPidsLimit, &msg
		}
	}
	return &r.res
}

// pidsCounter is implemented by processes that count forks refused at their
// pids limit (Docker containers).
type pidsCounter interface{ PidsLimitHits() int64 }
