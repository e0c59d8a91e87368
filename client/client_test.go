package client_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/codegw/codegw"
	"github.com/codegw/codegw/app/apptest"
	"github.com/codegw/codegw/client"
	"github.com/codegw/codegw/internal/testwait"
)

// server starts a real gateway with local kernels (two warm, nothing
// preloaded but matplotlib for the plot test) and one API key.
func server(t *testing.T) string {
	t.Helper()
	c := apptest.Config(t)
	c.Preload, c.PoolSize, c.APIKeys = []string{}, 2, []string{"k1", "k2"}
	_, base := apptest.Serve(t, c)
	return base
}

func newClient(t *testing.T, base, key string) *client.Client {
	t.Helper()
	c, err := client.New(base, client.WithKey(key))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

func TestClient(t *testing.T) {
	base := server(t)
	c := newClient(t, base, "k1")

	t.Run("stateless execute and typed errors", func(t *testing.T) {
		ctx := ctxT(t)
		res, err := c.Execute(ctx, codegw.ExecuteRequest{Code: "print(6*7)"})
		if err != nil || res.Status != codegw.StatusOK || res.Result != "42" {
			t.Fatalf("execute: %+v %v", res, err)
		}
		res, err = c.Execute(ctx, codegw.ExecuteRequest{Code: "1/0"})
		if err != nil || res.Status != codegw.StatusError || res.EName != "ZeroDivisionError" {
			t.Fatalf("a raising execute is an answer, not an error: %+v %v", res, err)
		}
		_, err = c.Execute(ctx, codegw.ExecuteRequest{Code: "  "})
		var e *client.Error
		if !errors.Is(err, client.ErrInvalid) || !errors.As(err, &e) || e.Status != 400 || e.Message == "" {
			t.Fatalf("empty code: want ErrInvalid with HTTP 400 and a message, got %#v", err)
		}
		if errors.Is(err, client.ErrNotFound) {
			t.Fatal("ErrInvalid matched ErrNotFound")
		}
		_, err = newClient(t, base, "wrong").Execute(ctx, codegw.ExecuteRequest{Code: "1"})
		if !errors.Is(err, client.ErrUnauthorized) {
			t.Fatalf("wrong key: want ErrUnauthorized, got %v", err)
		}
		_, err = c.Session("s_nosuchsession").Get(ctx)
		if !errors.Is(err, client.ErrNotFound) {
			t.Fatalf("missing session: want ErrNotFound, got %v", err)
		}
	})

	t.Run("stateless stream with decoded image", func(t *testing.T) {
		var (
			lines []string
			imgs  [][]byte
		)
		res, err := c.ExecuteStream(ctxT(t), codegw.ExecuteRequest{Code: "import matplotlib.pyplot as plt\nprint('a'); print('b')\nplt.plot([1,2]); plt.show()"}, client.Handler{
			Stdout: func(s string) { lines = append(lines, s) },
			Display: func(d client.Display) {
				if d.Image != nil {
					imgs = append(imgs, d.Image)
				}
			},
		})
		if err != nil || res.Status != codegw.StatusOK {
			t.Fatalf("stream: %+v %v", res, err)
		}
		if got := strings.Join(lines, ""); got != "a\nb\n" {
			t.Errorf("stdout callbacks got %q", got)
		}
		if len(imgs) != 1 || !bytes.HasPrefix(imgs[0], []byte("\x89PNG\r\n\x1a\n")) {
			t.Fatalf("want one decoded PNG, got %d images", len(imgs))
		}
		var buf bytes.Buffer
		if _, err := c.Download(ctxT(t), res.Images[0], &buf); err != nil || !bytes.HasPrefix(buf.Bytes(), []byte("\x89PNG")) {
			t.Fatalf("download image %s: %v", res.Images[0], err)
		}
	})

	t.Run("session over REST", func(t *testing.T) {
		ctx := ctxT(t)
		s, err := c.CreateSession(ctx, client.SessionOptions{Env: map[string]string{"GREETING": "hi"}})
		if err != nil {
			t.Fatal(err)
		}
		defer s.Delete(context.Background())
		if _, err := newClient(t, base, "k2").Session(s.ID).Get(ctx); !errors.Is(err, client.ErrNotFound) {
			t.Fatalf("another key sees the session: %v", err)
		}
		if _, err := s.Execute(ctx, codegw.ExecuteRequest{Code: "x = 41"}); err != nil {
			t.Fatal(err)
		}
		res, err := s.Execute(ctx, codegw.ExecuteRequest{Code: "import os\nprint(os.environ['GREETING'])\nx + 1"})
		if err != nil || res.Result != "hi\n42" {
			t.Fatalf("state kept: %+v %v", res, err)
		}
		if _, err := s.Upload(ctx, "in.txt", strings.NewReader("uploaded")); err != nil {
			t.Fatal(err)
		}
		res, err = s.Execute(ctx, codegw.ExecuteRequest{Code: "open('/code/output/out.txt','w').write(open('/code/input/in.txt').read().upper())"})
		if err != nil || res.Status != codegw.StatusOK || len(res.Files) != 1 {
			t.Fatalf("write output: %+v %v", res, err)
		}
		list, err := s.Files(ctx)
		if err != nil || len(list) != 1 || list[0].Name != "out.txt" {
			t.Fatalf("files: %+v %v", list, err)
		}
		var buf bytes.Buffer
		if _, err := s.Download(ctx, "out.txt", &buf); err != nil || buf.String() != "UPLOADED" {
			t.Fatalf("download: %q %v", buf.String(), err)
		}
		if _, err := s.Download(ctx, "nope.txt", &buf); !errors.Is(err, client.ErrNotFound) {
			t.Fatalf("missing file: %v", err)
		}
		all, err := c.ListSessions(ctx)
		if err != nil || len(all) == 0 {
			t.Fatalf("list: %v %v", all, err)
		}
		if err := s.Restart(ctx); err != nil {
			t.Fatal(err)
		}
		res, err = s.Execute(ctx, codegw.ExecuteRequest{Code: "x"})
		if err != nil || res.EName != "NameError" {
			t.Fatalf("restart keeps x: %+v %v", res, err)
		}
		if err := s.Delete(ctx); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Get(ctx); !errors.Is(err, client.ErrNotFound) {
			t.Fatalf("deleted session: %v", err)
		}
	})

	t.Run("websocket run", func(t *testing.T) {
		ctx := ctxT(t)
		s, err := c.CreateSession(ctx, client.SessionOptions{})
		if err != nil {
			t.Fatal(err)
		}
		defer s.Delete(context.Background())
		conn, err := s.Connect(ctx, client.ConnectOptions{})
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()

		// Streamed as printed: each line arrives before the next is printed.
		var (
			mu    sync.Mutex
			got   []string
			files []codegw.OutputFile
		)
		start := time.Now()
		var at []time.Duration
		res, err := conn.Run(ctx, codegw.ExecuteRequest{Code: "import time\nfor i in range(3):\n    print(i, flush=True); time.sleep(0.4)\nopen('/code/output/r.csv','w').write('a,b\\n')\nname = input('who? ')\nprint('hello', name)"}, client.Handler{
			Stdout: func(s string) {
				mu.Lock()
				got = append(got, s)
				at = append(at, time.Since(start))
				mu.Unlock()
			},
			Input: func(prompt string, _ bool) (string, error) {
				if prompt != "who? " {
					return "", errors.New("unexpected prompt " + prompt)
				}
				return "gopher", nil
			},
			File: func(f codegw.OutputFile) { files = append(files, f) },
		})
		if err != nil || res.Status != codegw.StatusOK {
			t.Fatalf("run: %+v %v", res, err)
		}
		if !strings.Contains(res.Stdout, "0\n1\n2\n") || !strings.Contains(res.Stdout, "hello gopher") {
			t.Fatalf("stdout %q", res.Stdout)
		}
		if len(at) < 3 || at[1]-at[0] < 250*time.Millisecond {
			t.Errorf("lines did not stream as printed: %v %q", at, got)
		}
		if len(files) != 1 || files[0].OriginalName != "r.csv" || len(res.Files) != 1 {
			t.Errorf("file events: %+v / %+v", files, res.Files)
		}

		// A cancelled context interrupts the code; the session lives on.
		cctx, cancel := context.WithTimeout(ctx, 1500*time.Millisecond)
		_, err = conn.Run(cctx, codegw.ExecuteRequest{Code: "import time; time.sleep(100)"}, client.Handler{})
		cancel()
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("cancelled run: %v", err)
		}
		res, err = conn.Run(ctx, codegw.ExecuteRequest{Code: "print('after')"}, client.Handler{})
		if err != nil || res.Result != "after" {
			t.Fatalf("run after an interrupt: %+v %v", res, err)
		}

		// A dropped connection is re-established with replay: nothing lost,
		// nothing twice.
		var n int
		res, err = conn.Run(ctx, codegw.ExecuteRequest{Code: "import time\nfor i in range(6):\n    print(i, flush=True); time.sleep(0.3)"}, client.Handler{
			Stdout: func(string) {
				n++
				if n == 2 {
					client.DropForTest(conn)
				}
			},
		})
		if err != nil || res.Stdout != "0\n1\n2\n3\n4\n5\n" {
			t.Fatalf("run across a reconnect: %+v %v", res, err)
		}

		// The session's end reaches a waiting connection as ErrNotFound.
		if err := s.Delete(ctx); err != nil {
			t.Fatal(err)
		}
		if _, err := conn.Run(ctx, codegw.ExecuteRequest{Code: "1"}, client.Handler{}); !errors.Is(err, client.ErrNotFound) {
			testwait.For(t, 30*time.Second, "ErrNotFound from a run on a deleted session", func() string {
				_, err = conn.Run(ctx, codegw.ExecuteRequest{Code: "1"}, client.Handler{})
				if errors.Is(err, client.ErrNotFound) {
					return ""
				}
				return fmt.Sprint(err)
			})
			if !errors.Is(err, client.ErrNotFound) {
				t.Fatalf("run on a deleted session: %v", err)
			}
		}
	})
}
