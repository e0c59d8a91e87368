package kernel_test

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/codegw/codegw/kernel"
)

// TestRawConn drives a real kernel through a RawConn beside the Kernel's
// own Client: a client-made header (epoch-float date) passes intact, the
// reply and iopub come back, and the Client's Execute still works.
func TestRawConn(t *testing.T) {
	k := launch(t, false)
	got := make(chan [2]string, 64)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	rc, err := kernel.DialRaw(ctx, k.Process().ConnectionInfo(), func(ch string, m *kernel.RawMessage) {
		ids, _ := m.IDs()
		got <- [2]string{ch + " " + ids.MsgType + " " + m.ParentID(), string(m.Content)}
	})
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	header := `{"msg_id":"raw-1","msg_type":"execute_request","session":"s","username":"u","date":1700000000.5,"version":"5.3"}`
	err = rc.Send(kernel.Shell, &kernel.RawMessage{Header: json.RawMessage(header),
		Content: json.RawMessage(`{"code":"1+41","silent":false,"store_history":true,"user_expressions":{},"allow_stdin":false}`)})
	if err != nil {
		t.Fatal(err)
	}
	var result, reply bool
	for !result || !reply {
		select {
		case g := <-got:
			switch {
			case g[0] == "iopub execute_result raw-1":
				result = strings.Contains(g[1], `"42"`)
			case g[0] == "shell execute_reply raw-1":
				reply = strings.Contains(g[1], `"ok"`)
			}
		case <-ctx.Done():
			t.Fatalf("result %v reply %v", result, reply)
		}
	}
	r, c := run(t, k, "print('still')")
	if r.Status != "ok" || c.stdout != "still\n" {
		t.Errorf("Execute beside a RawConn: %v %q", r.Status, c.stdout)
	}
	if err := rc.Send("iopub", &kernel.RawMessage{Header: json.RawMessage(header)}); err == nil {
		t.Error("send on iopub did not fail")
	}
}
