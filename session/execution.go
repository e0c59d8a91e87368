package session

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/codegw/codegw"
	"github.com/codegw/codegw/kernel"
	"github.com/codegw/codegw/session/outputs"
)

// execution is one request on its way through a kernel: the one path that
// stateless calls and session executions both take. Its run takes a worker
// (and, for a stateless call, a fresh kernel), fetches the input files and
// makes /code/input the working directory, runs the code while turning
// kernel messages into events and the answer within the output budget,
// collects the output files the run changed, and ends with exactly one done
// event — status "rejected", with the error's message and code, when a step
// before the code refused the request.
type execution struct {
	m *Manager
	// k is the kernel to run on; nil takes a fresh one from the pool,
	// destroyed afterwards.
	k    *kernel.Kernel
	id   string
	req  codegw.ExecuteRequest
	code string
	// emit receives the events; nil when nobody listens.
	emit func(codegw.Event)
	// onInput answers input(); nil makes input() fail at once.
	onInput func(context.Context, kernel.InputRequest) (string, error)
	// interrupted is set by a caller's interrupt; it is cleared when the
	// code starts, and a KeyboardInterrupt is then "interrupted", not an
	// error. May be nil.
	interrupted *atomic.Bool
	// seen is the output directory as the previous run left it; the files
	// that differ after this run are collected, and seen is updated.
	seen map[string]outputs.FileState

	// fresh is set when k was taken fresh for this run: nothing ran on it
	// before, so no fork was refused yet.
	fresh bool
	// free gives back the execution's share of its key's quotas (more
	// calls do nothing). run calls it before the done event, so that a
	// client that has seen the end may send its next execution at once.
	// May be nil.
	free func()

	// log names the request, session and execution ids.
	log *slog.Logger
	// sendMu serializes send.
	sendMu sync.Mutex

	// The answer being built.
	res            codegw.ExecuteResult
	budget         budget
	told           bool // the "truncated" status event was sent
	stdout, stderr strings.Builder
	value          string // text/plain of the execute_result, as admitted
}

// newExecutionID returns an id for an execution its caller did not name.
func newExecutionID() string { return codegw.NewID()[:16] }

// newExecution returns an execution of the prepared code, within m's output
// budget.
func (m *Manager) newExecution(id string, req codegw.ExecuteRequest, code string, emit func(codegw.Event)) *execution {
	return &execution{m: m, id: id, req: req, code: code, emit: emit,
		seen: map[string]outputs.FileState{}, budget: budget{left: m.cfg.MaxOutputBytes}}
}

// chdirInput makes /code/input the working directory, as the original did
// when inputs exist, so pd.read_csv('data.csv') works.
const chdirInput = "import os as _cg_os; _cg_os.chdir('/code/input'); del _cg_os"

// run runs the execution to its done event. An error means it never ran:
// the request was refused, and the done event says so.
func (x *execution) run(ctx context.Context) (*codegw.ExecuteResult, error) {
	ctx = codegw.WithLogAttrs(ctx, "execution", x.id)
	x.log = x.m.log.With(codegw.LogAttrs(ctx)...)
	start := time.Now()
	res, err := x.steps(ctx)
	x.observe(start, res, err)
	if x.free != nil {
		x.free()
	}
	if err != nil {
		x.log.Debug("execution refused", "code", codegw.ErrorCode(err), "err", err)
		x.send(codegw.Event{Type: codegw.EventDone, Status: codegw.StatusRejected, Error: codegw.ErrorMessage(err), Reason: codegw.ErrorCode(err)})
		return nil, err
	}
	x.log.Debug("execution finished", "kernel", x.k.ID(), "status", res.Status, "took", time.Since(start))
	done := codegw.Event{Type: codegw.EventDone, Status: res.Status, Duration: res.ExecutionTime, ExecutionCount: res.ExecutionCount, Truncated: res.Truncated}
	if res.Error != nil {
		done.Error = *res.Error
	}
	x.send(done)
	return res, nil
}

func (x *execution) steps(ctx context.Context) (*codegw.ExecuteResult, error) {
	release, err := x.m.acquireWorker(ctx)
	if err != nil {
		return nil, err
	}
	defer release()
	if x.k == nil {
		k, err := x.m.statelessKernel(ctx)
		if err != nil {
			return nil, err
		}
		defer x.m.destroy(k)
		x.k, x.fresh = k, true
	}
	code, inputs, err := x.fetch(ctx)
	if err != nil {
		return nil, err
	}
	outs := x.outputs()
	if err := outs.Watch(); err != nil {
		x.log.Warn("output files are collected at the end only", "err", err)
	}
	x.execute(ctx, code)
	x.res.Inputs = inputs
	x.res.Files = x.collect(outs)
	return &x.res, nil
}

// fetch downloads the input files into /code/input, replacing their URLs
// in the code, and makes it the working directory.
func (x *execution) fetch(ctx context.Context) (string, []codegw.InputFile, error) {
	if len(x.req.Files) == 0 {
		return x.code, []codegw.InputFile{}, nil
	}
	code, inputs, err := x.m.cfg.Fetcher.Fetch(ctx, x.req.Files, x.code, filepath.Join(x.k.Process().Dir(), "input"))
	if err != nil {
		x.m.cfg.Metrics.InputDownloads(inputOutcome(err), 1)
		return "", nil, err
	}
	x.m.cfg.Metrics.InputDownloads("ok", len(inputs))
	if _, err := x.k.Execute(ctx, chdirInput, kernel.ExecuteOptions{Silent: true}, kernel.Deadline{Timeout: 10 * time.Second}); err != nil {
		return "", nil, codegw.WrapError(codegw.EUNAVAILABLE, err, "prepare kernel")
	}
	return code, inputs, nil
}

// execute runs code within the request's timeout and fills the answer.
func (x *execution) execute(ctx context.Context, code string) {
	timeout := x.m.cfg.ExecTimeout
	if t := time.Duration(x.req.Timeout * float64(time.Second)); t > 0 && t < timeout {
		timeout = t
	}
	pids, _ := x.k.Process().(pidsCounter)
	var refused int64
	if pids != nil && !x.fresh {
		refused = pids.PidsLimitHits()
	}
	x.send(codegw.Event{Type: codegw.EventStatus, State: "busy"})
	if x.interrupted != nil {
		x.interrupted.Store(false)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if x.m != nil && x.m.halt != nil {
		defer context.AfterFunc(x.m.halt, cancel)()
	}
	start := time.Now()
	reply, err := x.k.Execute(ctx, code, kernel.ExecuteOptions{OnMessage: x.onMessage, OnInput: x.onInput, StoreHistory: true,
		OutputLimit: x.m.cfg.MaxOutputBytes},
		kernel.Deadline{Timeout: timeout, Grace: x.m.cfg.InterruptGrace})
	o := outcome{reply: reply, err: err, took: time.Since(start), interrupted: x.interrupted != nil && x.interrupted.Load()}
	o.exit, o.exited = x.k.Exit()
	if pids != nil {
		o.pidsRefused = pids.PidsLimitHits() - refused
	}
	x.finish(o)
}

// observe records the execution's end in the metrics.
func (x *execution) observe(start time.Time, res *codegw.ExecuteResult, err error) {
	mt := x.m.cfg.Metrics
	if err != nil {
		mt.Execution(string(codegw.StatusRejected), 0)
		return
	}
	mt.Execution(string(res.Status), time.Since(start))
	if res.Truncated {
		mt.Truncated(x.budget.dropped)
	}
}

// inputOutcome names a failed input download for the metrics: "refused"
// is the address guard's (SSRF) refusal.
func inputOutcome(err error) string {
	switch codegw.ErrorCode(err) {
	case codegw.EFORBIDDEN:
		return "refused"
	case codegw.EFETCH:
		return "fetch_failed"
	case codegw.ETOOLARGE:
		return "too_large"
	case codegw.EINVALID:
		return "invalid"
	}
	return "internal"
}

// pidsCounter is implemented by processes that count forks refused at their
// pids limit (Docker containers).
type pidsCounter interface{ PidsLimitHits() int64 }

// outputs returns the collector of the output files this run changes: each
// is stored and sent as a file event as soon as it is complete (Watch), and
// the end scan (collect) reconciles.
func (x *execution) outputs() *outputs.Tracker {
	return &outputs.Tracker{
		Dir: filepath.Join(x.k.Process().Dir(), "output"), Limits: x.m.cfg.Outputs, Store: x.m.cfg.Files,
		Seen: x.seen, Log: x.log,
		OnFile: func(f codegw.OutputFile) { x.send(codegw.Event{Type: codegw.EventFile, File: &f}) },
	}
}

// collect ends the watch and stores the output files that changed since
// the previous run and were not sent yet; it returns the last version of
// every file sent.
func (x *execution) collect(outs *outputs.Tracker) []codegw.OutputFile {
	out, seen, err := outs.Finish()
	if err != nil {
		x.log.Error("collect output files", "err", err)
	}
	x.seen = seen
	return out
}

// send delivers ev to the listener. The kernel's messages and the output
// watcher send from their own goroutines: one at a time, so the listener
// gets the events in the order the session numbers them.
func (x *execution) send(ev codegw.Event) {
	if x.emit != nil {
		ev.ExecutionID = x.id
		x.sendMu.Lock()
		defer x.sendMu.Unlock()
		x.emit(ev)
	}
}

// take admits text within the budget; the first cut is told as a
// "truncated" status event.
func (x *execution) take(s string) string {
	kept, _ := x.budget.take(s)
	x.noteCut()
	return kept
}

// noteCut marks the answer truncated once the budget has cut something.
func (x *execution) noteCut() {
	if !x.budget.cut || x.told {
		return
	}
	x.told = true
	x.res.Truncated = true
	x.send(codegw.Event{Type: codegw.EventStatus, State: "truncated", Reason: fmt.Sprintf("output past %d bytes is dropped", x.m.cfg.MaxOutputBytes)})
}

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

func (x *execution) onMessage(msg *kernel.Message) {
	switch msg.Header.MsgType {
	case "stream":
		if x.budget.left <= 0 { // past the budget: not even decoded
			x.budget.cut = true
			x.budget.dropped += len(msg.Content)
			x.noteCut()
			return
		}
		var c struct {
			Name string `json:"name"`
			Text string `json:"text"`
		}
		if json.Unmarshal(msg.Content, &c) != nil {
			return
		}
		text := x.take(c.Text)
		if text == "" {
			return
		}
		if c.Name == "stderr" {
			x.stderr.WriteString(text)
		} else {
			x.stdout.WriteString(text)
		}
		x.send(codegw.Event{Type: codegw.EventStream, Name: c.Name, Text: text})
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
		out := x.output(msg.Header.MsgType, c.Data)
		if out == nil {
			return
		}
		out.DisplayID = c.Transient.DisplayID
		admitted := x.admit(out)
		x.noteCut()
		if !admitted {
			return
		}
		typ := codegw.EventDisplay
		if msg.Header.MsgType == "execute_result" {
			typ = codegw.EventResult
			x.value = out.Text
		}
		x.res.Outputs = append(x.res.Outputs, *out)
		x.send(codegw.Event{Type: typ, Output: out})
	case "clear_output":
		x.send(codegw.Event{Type: codegw.EventStatus, State: "clear_output"})
	case "error":
		var c struct {
			EName     string   `json:"ename"`
			EValue    string   `json:"evalue"`
			Traceback []string `json:"traceback"`
		}
		if json.Unmarshal(msg.Content, &c) != nil {
			return
		}
		x.res.EName, x.res.EValue = x.take(c.EName), x.take(c.EValue)
		x.res.Traceback = x.traceback(c.Traceback)
		x.send(codegw.Event{Type: codegw.EventError, EName: x.res.EName, EValue: x.res.EValue, Traceback: x.res.Traceback})
	}
}

// traceback admits the lines of a traceback, colours stripped, until the
// budget is spent.
func (x *execution) traceback(lines []string) []string {
	var kept []string
	for _, line := range lines {
		if !x.budget.spend(lineFrame) {
			break
		}
		line, cut := x.budget.take(StripANSI(line))
		if cut {
			if line != "" {
				kept = append(kept, line)
			}
			break
		}
		kept = append(kept, line)
	}
	x.noteCut()
	return kept
}

// admit charges out to the budget, as budget's doc says: a stored image
// pays for its text only, any other output for its frame, its rich data
// whole or not at all (it then falls back to text/plain), and its text. It
// reports whether anything of out is left to show.
func (x *execution) admit(out *codegw.Output) bool {
	if !x.budget.takeWhole(out.DisplayID) {
		out.DisplayID = ""
	}
	if out.URL != "" {
		out.Text, _ = x.budget.take(out.Text)
		return true
	}
	if !x.budget.spend(outputFrame) {
		return false
	}
	if out.Data != "" && !x.budget.takeWhole(out.Data) {
		out.MIME, out.Data = "text/plain", ""
	}
	out.Text, _ = x.budget.take(out.Text)
	return out.Data != "" || out.Text != ""
}

// output picks the best representation of a display message. Images go to
// the image store; their URL is returned (and the base64 when inline). An
// image that is not one after all, or past the image limits, falls back to
// the next representation.
func (x *execution) output(typ string, data map[string]json.RawMessage) *codegw.Output {
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
		var s string
		if mime == "application/json" || json.Unmarshal(raw, &s) != nil {
			s = string(raw)
		}
		switch mime {
		case "image/png", "image/jpeg":
			b, err := base64.StdEncoding.DecodeString(strings.TrimSpace(s))
			if err != nil || !x.storeImage(out, ext(mime), b) {
				continue
			}
			if x.req.InlineImages {
				out.Data = s
			}
		case "image/svg+xml":
			if !x.storeImage(out, "svg", []byte(s)) {
				continue
			}
			if x.req.InlineImages {
				out.Data = base64.StdEncoding.EncodeToString([]byte(s))
			}
		default:
			out.Data = s
		}
		out.MIME = mime
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

// storeImage stores b and links it from out, within the image limits.
func (x *execution) storeImage(out *codegw.Output, ext string, b []byte) bool {
	if len(x.res.Images) >= x.m.cfg.MaxImages || len(b) > x.m.cfg.MaxImageBytes {
		x.res.Truncated = true
		return false
	}
	name, err := x.m.cfg.Images.PutBytes(ext, b)
	if err != nil {
		x.log.Error("store image", "err", err)
		return false
	}
	out.URL = x.m.cfg.Images.URL(name)
	x.res.Images = append(x.res.Images, out.URL)
	return true
}

// outcome is how the kernel call ended.
type outcome struct {
	reply       *kernel.ExecuteReply
	err         error
	interrupted bool        // a caller interrupted the run
	exit        kernel.Exit // how the kernel process ended, when exited
	exited      bool
	pidsRefused int64 // forks refused at the pids limit during the run
	took        time.Duration
}

// finish completes the answer from the outcome: the status and its error
// message, then the copies (error, result) within the budget.
func (x *execution) finish(o outcome) {
	res := &x.res
	res.Stdout, res.Stderr = x.stdout.String(), x.stderr.String()
	res.ExecutionTime = o.took.Seconds()
	if o.reply != nil {
		res.ExecutionCount = o.reply.ExecutionCount
	}
	var msg string
	res.Status, msg = x.status(o)
	if o.pidsRefused > 0 && (res.Status == codegw.StatusOK || res.Status == codegw.StatusError) {
		note := fmt.Sprintf("the code hit the process limit: %d fork(s) or thread(s) were refused", o.pidsRefused)
		res.Status, msg = codegw.StatusPidsLimit, strings.TrimSuffix(note+"\n"+msg, "\n")
	}
	if res.Status != codegw.StatusOK {
		if msg == "" {
			msg = string(res.Status)
		}
		res.Error = &msg
	}
	result := strings.TrimSpace(res.Stdout)
	if result != "" && x.value != "" {
		result += "\n"
	}
	res.Result = x.take(result + x.value)
	if res.Truncated {
		res.Result = withNote(res.Result)
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

// halted reports whether the manager aborted every execution (Abort).
func (x *execution) halted() bool {
	return x.m != nil && x.m.halt != nil && x.m.halt.Err() != nil
}

// status maps the outcome to a status and its error message. The message
// of a raised exception is a copy of its traceback, charged to the budget.
func (x *execution) status(o outcome) (codegw.Status, string) {
	var de *kernel.DeadlineError
	switch {
	case errors.As(o.err, &de) && de.Timeout > 0:
		return codegw.StatusTimeout, de.Error()
	case errors.As(o.err, &de) && x.halted():
		msg := "execution interrupted: " + context.Cause(x.m.halt).Error()
		if de.Killed {
			msg += "; the kernel did not respond to the interrupt and was killed"
		}
		return codegw.StatusInterrupted, msg
	case errors.As(o.err, &de):
		return codegw.StatusInterrupted, de.Error()
	case errors.Is(o.err, kernel.ErrDied):
		return deathStatus(o)
	case errors.Is(o.err, kernel.ErrNoReply) && o.interrupted:
		// The interrupt reached the kernel just before or after the code.
		return codegw.StatusInterrupted, "execution interrupted (the kernel sent no reply)"
	case o.err != nil:
		return codegw.StatusError, "execution failed: " + o.err.Error()
	case o.reply.Status == "ok":
		return codegw.StatusOK, ""
	case o.reply.EName == "KeyboardInterrupt" && o.interrupted:
		return codegw.StatusInterrupted, "execution interrupted"
	}
	res := &x.res
	if res.EName == "" { // no error message came on iopub
		res.EName, res.EValue = x.take(o.reply.EName), x.take(o.reply.EValue)
	}
	msg := fmt.Sprintf("%s: %s", res.EName, res.EValue)
	if len(res.Traceback) > 0 {
		msg = strings.Join(res.Traceback, "\n")
	}
	kept, cut := x.budget.take(msg)
	if !cut {
		return codegw.StatusError, msg
	}
	if kept == "" && len(res.EName) <= maxNameInNote {
		kept = res.EName
	}
	return codegw.StatusError, withNote(kept)
}

// deathStatus names how the kernel died: out of memory, its process limit,
// or anything else.
func deathStatus(o outcome) (codegw.Status, string) {
	switch {
	case o.exited && o.exit.OOMKilled:
		return codegw.StatusOOM, "the kernel ran out of memory and was killed; its state is lost"
	case o.exited && o.exit.PidsLimited:
		return codegw.StatusPidsLimit, "the kernel hit its process limit and died; its state is lost"
	}
	return codegw.StatusDied, "the kernel died: " + strings.TrimPrefix(o.err.Error(), kernel.ErrDied.Error()+": ") + "; its state is lost"
}
