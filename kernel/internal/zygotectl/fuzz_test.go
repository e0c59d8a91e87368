package zygotectl

import (
	"bytes"
	"io"
	"log/slog"
	"net"
	"testing"
	"time"
)

// bytesConn is a control connection whose zygote side has written data and
// hung up; what the gateway writes is dropped.
type bytesConn struct {
	net.Conn
	r *bytes.Reader
}

func (c *bytesConn) Read(p []byte) (int, error)       { return c.r.Read(p) }
func (c *bytesConn) Write(p []byte) (int, error)      { return len(p), nil }
func (c *bytesConn) Close() error                     { return nil }
func (c *bytesConn) SetWriteDeadline(time.Time) error { return nil }
func (c *bytesConn) SetReadDeadline(time.Time) error  { return nil }
func (c *bytesConn) SetDeadline(time.Time) error      { return nil }
func (c *bytesConn) RemoteAddr() net.Addr             { return &net.UnixAddr{Name: "zygote", Net: "unix"} }
func (c *bytesConn) LocalAddr() net.Addr              { return &net.UnixAddr{Name: "gateway", Net: "unix"} }

// FuzzRead feeds arbitrary lines from the zygote to the control
// connection's reader. The zygote's kernels run untrusted code and a kernel
// can reach the connection, so anything may arrive: Read must neither panic
// nor block, and every kernel it knew of is either reported exited or
// returned as an orphan; every waiting fork gets an answer or fails.
func FuzzRead(f *testing.F) {
	f.Add([]byte(`{"op":"ready","pid":7,"threads":1}` + "\n" +
		`{"op":"forked","token":"a","pid":12}` + "\n" + `{"op":"bound","token":"a"}` + "\n" + `{"op":"exit","token":"a","status":137}` + "\n"))
	f.Add([]byte(`{"op":"error","token":"b","error":"fork failed"}` + "\n"))
	f.Add([]byte(`{"op":"ready"}` + "\n" + `{"op":"ready"}` + "\n"))
	f.Add([]byte(`{"op":"forked","token":"a","pid":1}` + "\n" + `{"op":"forked","token":"a","pid":2}` + "\n" + `{"op":"exit","token":"a"}` + "\n" + `{"op":"exit","token":"a"}` + "\n"))
	f.Add([]byte("not json\n{\"op\":\n\n{}\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		z := New(&bytesConn{r: bytes.NewReader(data)}, slog.New(slog.NewTextHandler(io.Discard, nil)), "fuzz")
		runs := map[string]*fakeRun{"a": newRun(), "b": newRun()}
		waits := map[string]chan msg{}
		for tok, r := range runs {
			waits[tok] = make(chan msg, 1)
			z.pending[tok] = waits[tok]
			z.runs[tok] = r
		}
		done := make(chan []Run, 1)
		go func() { done <- z.Read() }()
		var orphans []Run
		select {
		case orphans = <-done:
		case <-time.After(10 * time.Second):
			t.Fatal("Read did not return at the end of the connection")
		}
		if !z.Ended() {
			t.Fatal("the connection is not marked ended")
		}
		for tok, r := range runs {
			exited := false
			select {
			case <-r.exited:
				exited = true
			default:
			}
			orphaned := false
			for _, o := range orphans {
				if o == Run(r) {
					orphaned = true
				}
			}
			if exited == orphaned {
				t.Fatalf("kernel %s: exited %v, orphaned %v: want exactly one", tok, exited, orphaned)
			}
			select {
			case <-waits[tok]: // an answer, or closed at the end
			default:
				t.Fatalf("fork %s is left waiting", tok)
			}
		}
	})
}
