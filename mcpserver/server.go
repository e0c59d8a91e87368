// Package mcpserver is the Model Context Protocol face of the service,
// built on the official Go SDK: tools to run Python in a kernel that lives
// as long as the MCP session (execute_python, list_files, read_file,
// upload_file, restart_kernel), served over streamable HTTP by the gateway
// at /mcp and over stdio by `codegw mcp`.
package mcpserver

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"unicode/utf8"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/codegw/codegw"
	"github.com/codegw/codegw/session"
	"github.com/codegw/codegw/session/inputs"
)

// Version is announced to MCP clients.
const Version = "1.0.0"

// Config configures the MCP servers.
type Config struct {
	Backend Backend
	// Fetcher downloads upload_file URLs under the SSRF rules of input
	// files.
	Fetcher *inputs.Fetcher
	// MaxRead caps what read_file returns (default 1 MiB).
	MaxRead int64
	// Resolve turns a URL of the Backend (e.g. "/files/x.csv") into the
	// link a client can follow; nil keeps it.
	Resolve func(string) string
}

// state is one MCP session: its owner and its kernel, started on first use
// and closed when the MCP session ends.
type state struct {
	cfg   *Config
	owner string
	// resolve makes URLs absolute for this session's requests.
	resolve func(string) string
	onEnd   func()

	watched sync.Once
	// ended runs close's work once; a second caller waits for it (the
	// stdio command must not exit while the first deletes the kernel).
	ended  sync.Once
	mu     sync.Mutex
	k      Kernel
	closed bool
}

// NewServer returns an MCP server with the tools bound to one session of
// owner; end runs when that session ends (after its kernel is deleted).
func NewServer(cfg *Config, owner string, resolve func(string) string, end func()) *mcp.Server {
	s, _ := newServer(cfg, owner, resolve, end, "")
	return s
}

// Run serves one MCP session of owner over t (e.g. &mcp.StdioTransport{})
// until it ends, then deletes its kernel.
func Run(ctx context.Context, cfg *Config, owner string, resolve func(string) string, t mcp.Transport) error {
	s, st := newServer(cfg, owner, resolve, nil, "")
	defer st.close()
	// The kernel goes as soon as ctx ends, not once the session has
	// waited for its handlers: a stdio client gives its server seconds
	// before SIGKILL, and a remote session must not outlive us.
	stop := context.AfterFunc(ctx, st.close)
	defer stop()
	return s.Run(ctx, t)
}

// newServer is NewServer whose session gets id, when not empty.
func newServer(cfg *Config, owner string, resolve func(string) string, end func(), id string) (*mcp.Server, *state) {
	st := &state{cfg: cfg, owner: owner, resolve: resolve, onEnd: end}
	if st.resolve == nil {
		st.resolve = func(u string) string { return u }
	}
	opts := &mcp.ServerOptions{
		Instructions: "Runs Python 3 in a sandboxed IPython kernel with numpy, pandas and matplotlib. " +
			"Variables persist across execute_python calls in this session. Files written to /code/output " +
			"are returned as links; uploaded files land in /code/input.",
		InitializedHandler: func(ctx context.Context, req *mcp.InitializedRequest) { st.watch(req.Session) },
	}
	if id != "" {
		opts.GetSessionID = func() string { return id }
	}
	s := mcp.NewServer(&mcp.Implementation{Name: "codegw", Title: "codegw Python interpreter", Version: Version}, opts)
	st.tools(s)
	return s, st
}

// watch closes the kernel when the MCP session ends.
func (st *state) watch(ss *mcp.ServerSession) {
	if ss == nil {
		return
	}
	st.watched.Do(func() {
		go func() {
			ss.Wait()
			st.close()
		}()
	})
}

// close deletes the kernel and ends the session, once; it returns when
// that is done, whoever started it.
func (st *state) close() {
	st.ended.Do(func() {
		st.mu.Lock()
		k := st.k
		st.closed, st.k = true, nil
		st.mu.Unlock()
		if k != nil {
			k.Close()
		}
		if st.onEnd != nil {
			st.onEnd()
		}
	})
}

// kernel returns the session's kernel, starting it on first use.
func (st *state) kernel(ctx context.Context) (Kernel, error) {
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.closed {
		return nil, errors.New("the MCP session has ended")
	}
	if st.k == nil {
		k, err := st.cfg.Backend.Open(ctx, st.owner)
		if err != nil {
			return nil, err
		}
		st.k = k
	}
	return st.k, nil
}

// ExecuteArgs are the arguments of execute_python.
type ExecuteArgs struct {
	Code    string  `json:"code" jsonschema:"Python source to run, e.g. import math; print(math.pi). The value of the last expression is returned like in Jupyter."`
	Timeout float64 `json:"timeout,omitempty" jsonschema:"seconds before the run is interrupted; the server caps it"`
	Fresh   bool    `json:"fresh,omitempty" jsonschema:"run in a new, empty kernel instead of this session's kernel; nothing persists"`
}

// FileArgs name a file.
type FileArgs struct {
	Name string `json:"name" jsonschema:"file name in /code/output, as list_files shows it"`
}

// UploadArgs are the arguments of upload_file.
type UploadArgs struct {
	Name string `json:"name,omitempty" jsonschema:"file name in /code/input; defaults to the URL's last path element"`
	URL  string `json:"url,omitempty" jsonschema:"public http(s) URL to download from (private and internal addresses are refused)"`
	Text string `json:"text,omitempty" jsonschema:"the file's content as text, instead of url"`
}

// NoArgs is the input of tools without arguments.
type NoArgs struct{}

func (st *state) tools(s *mcp.Server) {
	mcp.AddTool(s, &mcp.Tool{
		Name: "execute_python",
		Description: "Run Python code in this session's IPython kernel and return stdout, stderr, the value of the last " +
			"expression, rich outputs (plots as images, HTML/markdown as text) and links to files written to /code/output. " +
			"Variables, imports and files persist between calls in the same session. Use plt.show() or display() for plots. " +
			"If the code raises, the result is an error carrying the traceback. Set fresh to true for a one-off run in an empty kernel.",
	}, st.execute)
	mcp.AddTool(s, &mcp.Tool{
		Name:        "list_files",
		Description: "List the files in /code/output of this session's kernel (name, size, download link).",
		Annotations: &mcp.ToolAnnotations{ReadOnlyHint: true},
	}, st.listFiles)
	mcp.AddTool(s, &mcp.Tool{
		Name:        "read_file",
		Description: "Return the content of a file in /code/output: text as text, PNG/JPEG as an image, other binary as base64 in an embedded resource.",
		Annotations: &mcp.ToolAnnotations{ReadOnlyHint: true},
	}, st.readFile)
	mcp.AddTool(s, &mcp.Tool{
		Name: "upload_file",
		Description: "Put a file into /code/input of this session's kernel, either downloaded from a public URL or given as inline text. " +
			"Code then opens it as /code/input/<name>.",
	}, st.uploadFile)
	mcp.AddTool(s, &mcp.Tool{
		Name:        "restart_kernel",
		Description: "Restart this session's kernel: all variables and imports are lost, files in /code/input and /code/output are kept. Use it when the kernel is stuck or its state is broken.",
		Annotations: &mcp.ToolAnnotations{DestructiveHint: ptr(true)},
	}, st.restart)
	mcp.AddTool(s, &mcp.Tool{
		Name: "checkpoint",
		Description: "Save this session's state (variables, functions, DataFrames, models, the working directory and the files under /code) " +
			"as a checkpoint and return its id; restore_checkpoint goes back to it later. Open files, generators and other values that cannot be saved are named in the answer.",
	}, st.checkpoint)
	mcp.AddTool(s, &mcp.Tool{
		Name:        "restore_checkpoint",
		Description: "Replace this session's kernel with one restored from a checkpoint id that checkpoint returned: variables and files come back as they were then; what ran since is gone.",
		Annotations: &mcp.ToolAnnotations{DestructiveHint: ptr(true)},
	}, st.restoreCheckpoint)
}

// RestoreArgs are the arguments of restore_checkpoint.
type RestoreArgs struct {
	Checkpoint string `json:"checkpoint" jsonschema:"the checkpoint id (ck_...) that checkpoint returned"`
}

func (st *state) checkpoint(ctx context.Context, req *mcp.CallToolRequest, _ NoArgs) (*mcp.CallToolResult, any, error) {
	k, err := st.kernel(ctx)
	if err != nil {
		return nil, nil, err
	}
	st.watch(req.Session)
	snap, err := k.Checkpoint(ctx)
	if err != nil {
		return nil, nil, err
	}
	text := fmt.Sprintf("checkpoint %s saved (%d bytes): %s", snap.ID, snap.Bytes, strings.Join(snap.Variables, ", "))
	for _, s := range snap.Skipped {
		text += fmt.Sprintf("\nnot saved: %s (%s)", s.Name, s.Reason)
	}
	return &mcp.CallToolResult{Content: []mcp.Content{&mcp.TextContent{Text: text}}}, nil, nil
}

func (st *state) restoreCheckpoint(ctx context.Context, req *mcp.CallToolRequest, in RestoreArgs) (*mcp.CallToolResult, any, error) {
	if in.Checkpoint == "" {
		return nil, nil, errors.New("checkpoint is required")
	}
	k, err := st.kernel(ctx)
	if err != nil {
		return nil, nil, err
	}
	r, err := k.Restore(ctx, in.Checkpoint)
	if err != nil {
		return nil, nil, err
	}
	text := "restored"
	if r != nil {
		text = fmt.Sprintf("restored from %s: %s", r.Snapshot, strings.Join(r.Variables, ", "))
		for _, s := range r.Skipped {
			text += fmt.Sprintf("\nnot restored: %s (%s)", s.Name, s.Reason)
		}
	}
	return &mcp.CallToolResult{Content: []mcp.Content{&mcp.TextContent{Text: text}}}, nil, nil
}

func ptr[T any](v T) *T { return &v }

func (st *state) execute(ctx context.Context, req *mcp.CallToolRequest, in ExecuteArgs) (*mcp.CallToolResult, any, error) {
	if strings.TrimSpace(in.Code) == "" {
		return nil, nil, errors.New("code is empty")
	}
	ereq := codegw.ExecuteRequest{Code: in.Code, Timeout: in.Timeout, InlineImages: true}
	out := st.progress(ctx, req)
	var res *codegw.ExecuteResult
	var err error
	if in.Fresh {
		res, err = st.cfg.Backend.Execute(ctx, st.owner, ereq, out)
	} else {
		var k Kernel
		if k, err = st.kernel(ctx); err == nil {
			st.watch(req.Session)
			res, err = k.Execute(ctx, ereq, out)
		}
	}
	if err != nil {
		return nil, nil, err
	}
	return st.result(res), nil, nil
}

// progress returns the callbacks that send each complete stdout line, and
// each output file as soon as it is written, as progress notifications,
// when the client asked for progress. A file's notification carries its
// resource link in _meta ("codegw/file") and its URL in the message.
func (st *state) progress(ctx context.Context, req *mcp.CallToolRequest) Stream {
	tok := req.Params.GetProgressToken()
	if tok == nil {
		return Stream{}
	}
	var mu sync.Mutex
	var partial strings.Builder
	n := 0
	notify := func(msg string, meta mcp.Meta) {
		n++
		req.Session.NotifyProgress(ctx, &mcp.ProgressNotificationParams{ProgressToken: tok, Progress: float64(n), Message: msg, Meta: meta})
	}
	return Stream{
		Stdout: func(text string) {
			mu.Lock()
			defer mu.Unlock()
			partial.WriteString(text)
			s := partial.String()
			i := strings.LastIndexByte(s, '\n')
			if i < 0 {
				return
			}
			partial.Reset()
			partial.WriteString(s[i+1:])
			for _, line := range strings.Split(s[:i], "\n") {
				notify(line, nil)
			}
		},
		File: func(f codegw.OutputFile) {
			mu.Lock()
			defer mu.Unlock()
			link := st.fileLink(f)
			notify(fmt.Sprintf("file %s written: %s", f.OriginalName, link.URI), mcp.Meta{"codegw/file": link})
		},
	}
}

// fileLink is the resource link of an output file.
func (st *state) fileLink(f codegw.OutputFile) *mcp.ResourceLink {
	return &mcp.ResourceLink{URI: st.resolve(f.URL), Name: f.OriginalName, Size: ptr(f.SizeBytes),
		Description: "file written to /code/output/" + f.OriginalName}
}

// result turns an answer into tool content; a failed run is an error
// result, not a protocol error.
func (st *state) result(res *codegw.ExecuteResult) *mcp.CallToolResult {
	out := &mcp.CallToolResult{}
	add := func(c mcp.Content) { out.Content = append(out.Content, c) }
	if res.Stdout != "" {
		add(&mcp.TextContent{Text: res.Stdout})
	}
	if res.Stderr != "" {
		add(&mcp.TextContent{Text: "[stderr]\n" + res.Stderr})
	}
	for _, o := range res.Outputs {
		switch {
		case strings.HasPrefix(o.MIME, "image/"):
			mime := o.MIME
			if b, err := base64.StdEncoding.DecodeString(o.Data); err == nil && len(b) > 0 && mime != "image/svg+xml" {
				add(&mcp.ImageContent{Data: b, MIMEType: mime})
			} else if o.URL != "" {
				add(&mcp.ResourceLink{URI: st.resolve(o.URL), Name: filepath.Base(o.URL), MIMEType: mime})
			}
		case o.Data != "":
			add(&mcp.TextContent{Text: o.Data})
		case o.Text != "":
			add(&mcp.TextContent{Text: o.Text})
		}
	}
	for _, f := range res.Files {
		add(st.fileLink(f))
	}
	if res.Status != codegw.StatusOK {
		out.IsError = true
		var b strings.Builder
		msg := ""
		if res.Error != nil {
			msg = *res.Error
		}
		switch res.Status {
		case codegw.StatusTimeout:
			fmt.Fprintf(&b, "Timed out: %s", msg)
		case codegw.StatusError:
			fmt.Fprintf(&b, "%s: %s", res.EName, res.EValue)
		default:
			fmt.Fprintf(&b, "Execution %s: %s", res.Status, msg)
		}
		if len(res.Traceback) > 0 {
			b.WriteString("\n")
			b.WriteString(session.StripANSI(strings.Join(res.Traceback, "\n")))
		}
		add(&mcp.TextContent{Text: b.String()})
	}
	if res.Truncated {
		add(&mcp.TextContent{Text: "[output truncated]"})
	}
	if len(out.Content) == 0 {
		add(&mcp.TextContent{Text: "(no output)"})
	}
	return out
}

func (st *state) listFiles(ctx context.Context, req *mcp.CallToolRequest, _ NoArgs) (*mcp.CallToolResult, any, error) {
	k, err := st.kernel(ctx)
	if err != nil {
		return nil, nil, err
	}
	list, err := k.Files(ctx)
	if err != nil {
		return nil, nil, err
	}
	out := &mcp.CallToolResult{}
	if len(list) == 0 {
		out.Content = append(out.Content, &mcp.TextContent{Text: "/code/output is empty"})
	}
	for _, f := range list {
		out.Content = append(out.Content, &mcp.ResourceLink{URI: st.resolve(f.URL), Name: f.Name, Size: ptr(f.Size)})
	}
	return out, nil, nil
}

func (st *state) readFile(ctx context.Context, req *mcp.CallToolRequest, in FileArgs) (*mcp.CallToolResult, any, error) {
	k, err := st.kernel(ctx)
	if err != nil {
		return nil, nil, err
	}
	max := st.cfg.MaxRead
	if max <= 0 {
		max = 1 << 20
	}
	var buf bytes.Buffer
	if _, err := k.Read(ctx, in.Name, &limitWriter{w: &buf, n: max + 1}); err != nil && !errors.Is(err, errLimit) {
		return nil, nil, err
	}
	if int64(buf.Len()) > max {
		return nil, nil, fmt.Errorf("%s is larger than %d bytes; use its download link from list_files", in.Name, max)
	}
	b := buf.Bytes()
	mime := http.DetectContentType(b)
	switch {
	case mime == "image/png" || mime == "image/jpeg":
		return &mcp.CallToolResult{Content: []mcp.Content{&mcp.ImageContent{Data: b, MIMEType: mime}}}, nil, nil
	case utf8.Valid(b):
		return &mcp.CallToolResult{Content: []mcp.Content{&mcp.TextContent{Text: string(b)}}}, nil, nil
	}
	return &mcp.CallToolResult{Content: []mcp.Content{&mcp.EmbeddedResource{Resource: &mcp.ResourceContents{
		URI: "file:///code/output/" + in.Name, MIMEType: mime, Blob: b}}}}, nil, nil
}

var errLimit = errors.New("limit reached")

type limitWriter struct {
	w io.Writer
	n int64
}

func (l *limitWriter) Write(p []byte) (int, error) {
	if int64(len(p)) > l.n {
		n, _ := l.w.Write(p[:l.n])
		l.n = 0
		return n, errLimit
	}
	l.n -= int64(len(p))
	return l.w.Write(p)
}

func (st *state) uploadFile(ctx context.Context, req *mcp.CallToolRequest, in UploadArgs) (*mcp.CallToolResult, any, error) {
	if (in.URL == "") == (in.Text == "") {
		return nil, nil, errors.New("give exactly one of url and text")
	}
	k, err := st.kernel(ctx)
	if err != nil {
		return nil, nil, err
	}
	var r io.Reader = strings.NewReader(in.Text)
	name := in.Name
	if in.URL != "" {
		if st.cfg.Fetcher == nil {
			return nil, nil, errors.New("uploads from URLs are disabled")
		}
		dir, err := os.MkdirTemp("", "codegw-mcp-upload-")
		if err != nil {
			return nil, nil, err
		}
		defer os.RemoveAll(dir)
		_, inputs, err := st.cfg.Fetcher.Fetch(ctx, []string{in.URL}, "", dir)
		if err != nil {
			return nil, nil, fmt.Errorf("%s", codegw.ErrorMessage(err))
		}
		f, err := os.Open(filepath.Join(dir, inputs[0].LocalName))
		if err != nil {
			return nil, nil, err
		}
		defer f.Close()
		r = f
		if name == "" {
			name = inputs[0].LocalName
		}
	}
	if name == "" {
		return nil, nil, errors.New("name is required with text")
	}
	fi, err := k.Upload(ctx, name, r)
	if err != nil {
		return nil, nil, err
	}
	return &mcp.CallToolResult{Content: []mcp.Content{&mcp.TextContent{
		Text: fmt.Sprintf("uploaded /code/input/%s (%d bytes)", fi.Name, fi.Size)}}}, nil, nil
}

func (st *state) restart(ctx context.Context, req *mcp.CallToolRequest, _ NoArgs) (*mcp.CallToolResult, any, error) {
	k, err := st.kernel(ctx)
	if err != nil {
		return nil, nil, err
	}
	if err := k.Restart(ctx); err != nil {
		return nil, nil, err
	}
	return &mcp.CallToolResult{Content: []mcp.Content{&mcp.TextContent{
		Text: "the kernel was restarted: variables and imports are gone, files are kept"}}}, nil, nil
}
