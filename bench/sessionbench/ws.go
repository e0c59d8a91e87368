package main

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/gorilla/websocket"

	"github.com/codegw/codegw/bench/internal/benchkit"
)

// event is the part of a server event the bench reads.
type event struct {
	Type        string `json:"type"`
	ExecutionID string `json:"execution_id"`
	State       string `json:"state"`
	Status      string `json:"status"`
	Error       string `json:"error"`
}

// wsClient is one session's websocket, as an agent would hold it.
type wsClient struct {
	conn *websocket.Conn
	seq  int
}

// createSession makes a session through the REST API and returns its id.
func createSession(ctx context.Context, c *http.Client, base string) (string, error) {
	var s struct {
		ID string `json:"id"`
	}
	if err := benchkit.PostJSON(ctx, c, base+"/api/v1/sessions", map[string]any{}, &s, 201); err != nil {
		return "", err
	}
	return s.ID, nil
}

// deleteSession ends a session through the REST API.
func deleteSession(ctx context.Context, c *http.Client, base, id string) error {
	req, err := http.NewRequestWithContext(ctx, "DELETE", base+"/api/v1/sessions/"+id, nil)
	if err != nil {
		return err
	}
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("DELETE session %s: status %d", id, resp.StatusCode)
	}
	return nil
}

// dial connects to a session's websocket and waits for its "connected"
// status.
func dial(base, id string) (*wsClient, error) {
	u := "ws" + strings.TrimPrefix(base, "http") + "/api/v1/sessions/" + id + "/ws"
	conn, _, err := websocket.DefaultDialer.Dial(u, nil)
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", u, err)
	}
	conn.SetReadDeadline(time.Now().Add(30 * time.Second))
	for {
		var ev event
		if err := conn.ReadJSON(&ev); err != nil {
			conn.Close()
			return nil, fmt.Errorf("session %s: waiting for connected: %w", id, err)
		}
		if ev.Type == "status" && ev.State == "connected" {
			conn.SetReadDeadline(time.Time{})
			return &wsClient{conn: conn}, nil
		}
	}
}

// exec sends one execute message and reads events until its "done": the
// time an agent waits for an answer.
func (w *wsClient) exec(code string) (time.Duration, error) {
	w.seq++
	id := fmt.Sprintf("e%d", w.seq)
	t0 := time.Now()
	if err := w.conn.WriteJSON(map[string]any{"type": "execute", "id": id, "code": code}); err != nil {
		return 0, err
	}
	w.conn.SetReadDeadline(time.Now().Add(60 * time.Second))
	for {
		var ev event
		if err := w.conn.ReadJSON(&ev); err != nil {
			return 0, fmt.Errorf("execute %s: %w", id, err)
		}
		if ev.Type == "error_response" {
			return 0, fmt.Errorf("execute %s: %s", id, ev.Error)
		}
		if ev.Type == "done" && ev.ExecutionID == id {
			d := time.Since(t0)
			if ev.Status != "ok" {
				return d, fmt.Errorf("execute %s: status %s: %s", id, ev.Status, ev.Error)
			}
			return d, nil
		}
	}
}

func (w *wsClient) close() {
	w.conn.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, ""), time.Now().Add(time.Second))
	w.conn.Close()
}

// holder is the child process (-holder) that keeps the idle sessions'
// websockets open, so that the gateway's memory is measured without the
// clients' in the same heap. It reads one session id per line from stdin,
// dials it, and answers "ok" or "err <message>" on stdout; it keeps reading
// every socket (which answers the server's pings) until stdin closes, then
// closes them all and exits.
func holder(base string) error {
	var (
		mu    sync.Mutex
		conns []*wsClient
		wg    sync.WaitGroup
	)
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		id := strings.TrimSpace(in.Text())
		w, err := dial(base, id)
		if err != nil {
			fmt.Printf("err %s\n", strings.ReplaceAll(err.Error(), "\n", " "))
			continue
		}
		mu.Lock()
		conns = append(conns, w)
		mu.Unlock()
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				if _, _, err := w.conn.ReadMessage(); err != nil {
					return
				}
			}
		}()
		fmt.Println("ok")
	}
	mu.Lock()
	for _, w := range conns {
		w.close()
	}
	mu.Unlock()
	wg.Wait()
	return nil
}
