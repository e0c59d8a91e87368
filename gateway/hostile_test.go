package gateway_test

import (
	"bufio"
	"encoding/json"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// rawRequest sends a hand-written HTTP/1.1 request and returns the status
// and body of the answer; a reset connection fails the test.
func rawRequest(t *testing.T, base, req string) (int, []byte) {
	t.Helper()
	conn, err := net.Dial("tcp", strings.TrimPrefix(base, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := conn.Write([]byte(req)); err != nil {
		t.Fatalf("write: %v", err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("no answer (%v)", err)
	}
	defer resp.Body.Close()
	var body []byte
	buf := make([]byte, 4096)
	for {
		n, err := resp.Body.Read(buf)
		body = append(body, buf[:n]...)
		if err != nil {
			break
		}
	}
	return resp.StatusCode, body
}

// TestOversizedRequests: over-long URLs, paths and headers get a 4xx with
// the JSON error body, never a reset connection, and the server serves on.
func TestOversizedRequests(t *testing.T) {
	e := newEnv(t, envOptions{keys: []string{"k1"}, poolSize: 1})
	long := strings.Repeat("a", 5000)
	huge := strings.Repeat("b", 70000)
	tests := []struct {
		name   string
		req    string
		status []int
	}{
		{"5,000-character kernel id, interrupt", "POST /api/kernels/" + long + "/interrupt HTTP/1.1\r\nHost: x\r\nAuthorization: token k1\r\nContent-Length: 2\r\n\r\n{}", []int{404}},
		{"5,000-character kernel id, restart", "POST /api/kernels/" + long + "/restart HTTP/1.1\r\nHost: x\r\nAuthorization: token k1\r\nContent-Length: 2\r\n\r\n{}", []int{404}},
		{"70,000-character path", "GET /api/v1/sessions/" + huge + " HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer k1\r\n\r\n", []int{431}},
		{"10,000-character path", "GET /api/v1/sessions/" + huge[:10000] + " HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer k1\r\n\r\n", []int{414}},
		{"70,000-character query", "GET /api/v1/sessions?x=" + huge + " HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer k1\r\n\r\n", []int{414, 431}},
		{"70,000-character header", "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + huge + "\r\n\r\n", []int{431}},
		{"many headers", "GET /healthz HTTP/1.1\r\nHost: x\r\n" + strings.Repeat("X-H: 0123456789\r\n", 8000) + "\r\n", []int{431}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st, body := rawRequest(t, e.base, tt.req)
			t.Logf("status %d body %s", st, truncate(string(body), 120))
			ok := false
			for _, s := range tt.status {
				ok = ok || s == st
			}
			if !ok {
				t.Fatalf("status %d, want one of %v (body %q)", st, tt.status, truncate(string(body), 200))
			}
			var m struct{ Error, Code string }
			if err := json.Unmarshal(body, &m); err != nil || m.Error == "" || m.Code == "" {
				t.Fatalf("body %q is not the JSON error", truncate(string(body), 200))
			}
		})
	}
	// Go's client sends its body at once: the answer must still arrive
	// (the server reads what the client sends before closing).
	for _, n := range []int{5000, 12000, 40000} {
		var m struct{ Error, Code string }
		body := strings.Repeat(" ", 200000) + "{}"
		st := e.do("POST", "/api/kernels/"+strings.Repeat("k", n)+"/interrupt", body, &m, "Authorization", "token k1")
		if (n == 5000 && st != 404) || (n == 12000 && st != 414) || (n == 40000 && st != 431) || m.Code == "" {
			t.Fatalf("%d-character id with a body: status %d, %+v", n, st, m)
		}
	}
	if st := e.do("GET", "/healthz", nil, nil); st != 200 {
		t.Fatalf("healthz after the oversized requests: %d", st)
	}
}
