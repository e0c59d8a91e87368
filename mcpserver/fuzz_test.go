package mcpserver

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/codegw/codegw"
)

// echoKernel is a stand-in for a kernel that answers with what it was
// given: the fuzzed arguments reach the tools' own code (and their results,
// images included, the conversion to MCP content) without a real kernel,
// which the TypeScript client tests drive.
type echoKernel struct{}

func (echoKernel) Execute(ctx context.Context, req codegw.ExecuteRequest, stream Stream) (*codegw.ExecuteResult, error) {
	if stream.Stdout != nil {
		stream.Stdout(req.Code)
	}
	if stream.File != nil {
		stream.File(codegw.OutputFile{URL: "/files/" + req.Code, OriginalName: req.Code})
	}
	errMsg := req.Code
	return &codegw.ExecuteResult{Status: codegw.StatusError, Stdout: req.Code, Error: &errMsg, EName: req.Code, Traceback: []string{req.Code},
		Outputs: []codegw.Output{{MIME: "image/png", Data: req.Code, URL: "/images/" + req.Code}, {MIME: "image/svg+xml", Data: base64.StdEncoding.EncodeToString([]byte(req.Code))}, {MIME: "text/html", Data: req.Code}},
		Files:   []codegw.OutputFile{{URL: "/files/" + req.Code, OriginalName: req.Code}}}, nil
}
func (echoKernel) Restart(context.Context) error { return nil }
func (echoKernel) Files(context.Context) ([]File, error) {
	return []File{{Name: "a.csv", Size: 3, URL: "/files/a"}}, nil
}
func (echoKernel) Read(ctx context.Context, name string, w io.Writer) (int64, error) {
	n, err := io.WriteString(w, name)
	return int64(n), err
}
func (echoKernel) Upload(ctx context.Context, name string, r io.Reader) (File, error) {
	n, err := io.Copy(io.Discard, r)
	return File{Name: name, Size: n}, err
}
func (echoKernel) Close() error { return nil }
func (echoKernel) Checkpoint(context.Context) (codegw.Snapshot, error) {
	return codegw.Snapshot{ID: "ck_echo"}, nil
}
func (echoKernel) Restore(context.Context, string) (*codegw.Restored, error) { return nil, nil }

type echoBackend struct{}

func (echoBackend) Execute(ctx context.Context, owner string, req codegw.ExecuteRequest, stream Stream) (*codegw.ExecuteResult, error) {
	return echoKernel{}.Execute(ctx, req, stream)
}
func (echoBackend) Open(context.Context, string) (Kernel, error) { return echoKernel{}, nil }

var fuzzTools = []string{"execute_python", "list_files", "read_file", "upload_file", "restart_kernel", "checkpoint", "restore_checkpoint", "no_such_tool"}

// FuzzToolCall sends arbitrary arguments to every tool over a real MCP
// session (in memory): the SDK validates and decodes them into the tools'
// argument structs, and the tools' code runs on what gets through. Every
// call ends with a result or an error, and the server keeps serving.
func FuzzToolCall(f *testing.F) {
	f.Add(uint8(0), []byte(`{"code":"print(1)","timeout":5,"fresh":true}`))
	f.Add(uint8(0), []byte(`{"code":"iVBORw0KGgo=","timeout":1e308}`))
	f.Add(uint8(1), []byte(`{}`))
	f.Add(uint8(2), []byte(`{"name":"../../etc/passwd"}`))
	f.Add(uint8(3), []byte(`{"name":"a.txt","text":"hello"}`))
	f.Add(uint8(3), []byte(`{"url":"http://127.0.0.1/x"}`))
	f.Add(uint8(3), []byte(`{"name":"","url":"","text":""}`))
	f.Add(uint8(4), []byte(`null`))
	f.Add(uint8(0), []byte(`{"code":7}`))
	ctx := context.Background()
	srv := NewServer(&Config{Backend: echoBackend{}, MaxRead: 1 << 10}, "owner", nil, nil)
	st, ct := mcp.NewInMemoryTransports()
	if _, err := srv.Connect(ctx, st, nil); err != nil {
		f.Fatal(err)
	}
	cs, err := mcp.NewClient(&mcp.Implementation{Name: "fuzz", Version: "1"}, nil).Connect(ctx, ct, nil)
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { cs.Close() })
	f.Fuzz(func(t *testing.T, tool uint8, args []byte) {
		if !json.Valid(args) {
			return // the SDK's JSON-RPC framing refuses it before us
		}
		name := fuzzTools[int(tool)%len(fuzzTools)]
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		res, err := cs.CallTool(cctx, &mcp.CallToolParams{Name: name, Arguments: json.RawMessage(args)})
		if cctx.Err() != nil {
			t.Fatalf("%s(%s): no answer: %v", name, args, cctx.Err())
		}
		if err == nil && res == nil {
			t.Fatalf("%s(%s): neither result nor error", name, args)
		}
		if err != nil && strings.Contains(err.Error(), "connection closed") {
			t.Fatalf("%s(%s): the session ended: %v", name, args, err)
		}
	})
}
