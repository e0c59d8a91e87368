package web_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/browser"
	"github.com/chromedp/cdproto/input"
	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"
	"github.com/chromedp/chromedp/kb"

	"github.com/codegw/codegw/app/apptest"
	"github.com/codegw/codegw/internal/testwait"
	"github.com/codegw/codegw/web"
)

const testKey = "pk-playground-test"

// sampleCode is what a data-analysis chat frontend typically runs.
const sampleCode = `import time
import pandas as pd, matplotlib.pyplot as plt
for step in ['loading', 'cleaning', 'plotting']:
    print(step, flush=True)
    time.sleep(0.3)
df = pd.DataFrame({'month': ['Jan', 'Feb', 'Mar', 'Apr'], 'sales': [120, 135, 128, 160]})
df.to_csv('/code/output/sales.csv', index=False)
df.plot(x='month', y='sales', marker='o', figsize=(5, 2.2))
plt.show()
df.describe()
`

// startGateway runs a whole gateway with keys on and real local kernels,
// the parts cmd/codegw wires (as gateway/harness_test.go does), and returns
// its base URL.
func startGateway(t *testing.T) string {
	t.Helper()
	c := apptest.Config(t)
	c.PoolSize, c.MaxWorkers, c.InstanceID = 2, 3, "web-test"
	c.APIKeys, c.UploadLimit, c.PingInterval = []string{testKey}, 1<<20, 5*time.Second
	c.InputMaxFiles, c.InputFileMaxBytes, c.InputTotalBytes = 3, 1<<20, 2<<20
	a, base := apptest.Serve(t, c)
	testwait.Until(t, 90*time.Second, "the pool to fill", func() bool { return a.Pool.Stats().Ready >= 2 })
	return base
}

// dropProxy is a TCP proxy in front of the gateway whose connections the
// test can cut all at once: a network drop as the browser sees it.
type dropProxy struct {
	ln     net.Listener
	target string
	mu     sync.Mutex
	conns  map[net.Conn]bool
	wg     sync.WaitGroup
}

func newDropProxy(t *testing.T, target string) *dropProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &dropProxy{ln: ln, target: target, conns: map[net.Conn]bool{}}
	p.wg.Add(1)
	go p.serve()
	t.Cleanup(func() {
		ln.Close()
		p.drop()
		p.wg.Wait()
	})
	return p
}

func (p *dropProxy) url() string { return "http://" + p.ln.Addr().String() }

func (p *dropProxy) serve() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.wg.Add(1)
		go p.pipe(c)
	}
}

func (p *dropProxy) pipe(c net.Conn) {
	defer p.wg.Done()
	d, err := net.Dial("tcp", p.target)
	if err != nil {
		c.Close()
		return
	}
	p.mu.Lock()
	p.conns[c], p.conns[d] = true, true
	p.mu.Unlock()
	done := make(chan struct{})
	go func() {
		io.Copy(d, c)
		d.Close()
		close(done)
	}()
	io.Copy(c, d)
	c.Close()
	<-done
	p.mu.Lock()
	delete(p.conns, c)
	delete(p.conns, d)
	p.mu.Unlock()
}

// drop closes every open connection; new ones are still accepted.
func (p *dropProxy) drop() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	for c := range p.conns {
		c.Close()
	}
	return len(p.conns) / 2
}

// chromiumPath finds Debian's chromium; under CI=true a missing browser
// fails the test instead of skipping it.
func chromiumPath(t *testing.T) string {
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("chromium is not installed (scripts/deps.sh installs it)")
	}
	t.Skip("chromium is not installed; run scripts/deps.sh")
	return ""
}

// artifactsDir is where screenshots go: $CODEGW_TEST_ARTIFACTS, else a
// temporary directory.
func artifactsDir(t *testing.T) string {
	dir := os.Getenv("CODEGW_TEST_ARTIFACTS")
	if dir == "" {
		return t.TempDir()
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// page drives the playground in one browser tab.
type page struct {
	t   *testing.T
	ctx context.Context
}

// with returns the page for a subtest, whose t the helpers fail.
func (p *page) with(t *testing.T) *page { return &page{t: t, ctx: p.ctx} }

func (p *page) do(steps ...chromedp.Action[chromedp.Void]) {
	p.t.Helper()
	if err := chromedp.Do(p.ctx, steps...); err != nil {
		p.t.Fatal(err)
	}
}

// eval evaluates a JavaScript expression into a T.
func eval[T any](p *page, expr string) T {
	p.t.Helper()
	v, err := chromedp.Run(p.ctx, chromedp.Evaluate[T](expr))
	if err != nil {
		p.t.Fatalf("%s: %v", expr, err)
	}
	return v
}

// js runs a JavaScript statement for its effect.
func js(expr string) chromedp.Action[chromedp.Void] {
	return func(ctx context.Context, t *chromedp.Target) (chromedp.Void, error) {
		_, err := chromedp.Evaluate[*runtime.RemoteObject](expr)(ctx, t)
		return chromedp.Void{}, err
	}
}

// wait polls a JavaScript expression until it is truthy.
func (p *page) wait(expr string, timeout time.Duration) {
	p.t.Helper()
	_, err := chromedp.Run(p.ctx, chromedp.Poll[bool]("!!("+expr+")", chromedp.WithPollingTimeout(timeout), chromedp.WithPollingInterval(25*time.Millisecond)))
	if err != nil {
		state, _ := chromedp.Run(p.ctx, chromedp.Evaluate[string](`document.getElementById('banner').textContent + ' | ' + document.getElementById('conn').textContent + ' | ' + ((document.querySelector('#cells .cell') || {}).innerText || '')`))
		p.t.Fatalf("waiting for %s: %v (page: %s)", expr, err, state)
	}
}

// submit puts code in the editor, presses Run and returns the new cell's
// id once the page has made it.
func (p *page) submit(code string) string {
	p.t.Helper()
	n := eval[int](p, `document.querySelectorAll('#cells .cell').length`)
	q, _ := json.Marshal(code)
	p.do(js(fmt.Sprintf(`playground.editor.setValue(%s)`, q)), chromedp.Click(chromedp.ID("run")))
	p.wait(fmt.Sprintf(`document.querySelectorAll('#cells .cell').length > %d`, n), 30*time.Second)
	return eval[string](p, `document.querySelector('#cells .cell').dataset.id`)
}

func cellJS(id string) string { return fmt.Sprintf(`document.querySelector('.cell[data-id=%q]')`, id) }

// done waits for a cell to finish and returns its final status.
func (p *page) done(id string, timeout time.Duration) string {
	p.t.Helper()
	p.wait(cellJS(id)+`.dataset.done === "1"`, timeout)
	return eval[string](p, cellJS(id)+`.dataset.status`)
}

// runOK runs code, fails unless it ends with status ok, and returns the
// cell's id and stdout.
func (p *page) runOK(code string, timeout time.Duration) (id, stdout string) {
	p.t.Helper()
	id = p.submit(code)
	if st := p.done(id, timeout); st != "ok" {
		p.t.Fatalf("status %q, want ok; output: %s", st, eval[string](p, cellJS(id)+`.querySelector('.out').innerText`))
	}
	return id, p.stdout(id)
}

func (p *page) stdout(id string) string {
	p.t.Helper()
	return eval[string](p, `Array.from(`+cellJS(id)+`.querySelectorAll('pre.stdout')).map(e => e.textContent).join('')`)
}

func (p *page) text(sel string) string {
	p.t.Helper()
	return eval[string](p, fmt.Sprintf(`(document.querySelector(%q) || {}).textContent || ''`, sel))
}

func (p *page) screenshot(dir, name string) {
	p.t.Helper()
	buf, err := chromedp.Run(p.ctx, chromedp.FullScreenshot(100))
	if err != nil {
		p.t.Fatal(err)
	}
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, buf, 0o644); err != nil {
		p.t.Fatal(err)
	}
	p.t.Logf("screenshot %s", path)
}

// TestPlaygroundEndToEnd drives the page in headless Chromium against a
// real gateway and real kernels, through a proxy the test can cut.
func TestPlaygroundEndToEnd(t *testing.T) {
	chromium := chromiumPath(t)
	shots := artifactsDir(t)
	base := startGateway(t)
	px := newDropProxy(t, strings.TrimPrefix(base, "http://"))

	// The page is static and needs no key; the API it calls does.
	for path, want := range map[string]int{"/": 200, "/playground/app.js": 200, "/api/v1/sessions": 401} {
		resp, err := http.Get(base + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Errorf("GET %s without a key: %s, want %d", path, resp.Status, want)
		}
		if want == 200 && resp.Header.Get("Content-Security-Policy") != web.CSP {
			t.Errorf("GET %s: Content-Security-Policy %q", path, resp.Header.Get("Content-Security-Policy"))
		}
	}

	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(chromium),
		chromedp.Flag("headless", true),
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.Flag("disable-quic", true),
		chromedp.NoFirstRun,
		chromedp.NoDefaultBrowserCheck,
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1280, 1000),
	}
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	defer cancelAlloc()
	bctx, cancelBrowser := chromedp.NewContext(actx)
	defer cancelBrowser()
	ctx, cancel := context.WithTimeout(bctx, 5*time.Minute)
	defer cancel()
	p := &page{t: t, ctx: ctx}

	// Uncaught exceptions and CSP violations are page faults.
	if err := chromedp.Do(ctx); err != nil { // starts the browser
		t.Fatal(err)
	}
	consoleCtx, stopConsole := context.WithCancel(ctx)
	var faults []string
	consoleDone := make(chan struct{})
	console := chromedp.Console(consoleCtx)
	go func() {
		defer close(consoleDone)
		for m, err := range console {
			if err != nil {
				return
			}
			if m.Type == chromedp.ConsoleException || strings.Contains(m.Text, "Content Security Policy") {
				faults = append(faults, string(m.Type)+": "+m.Text)
			}
		}
	}()
	defer func() {
		stopConsole()
		<-consoleDone
		for _, f := range faults {
			t.Errorf("page fault: %s", f)
		}
	}()

	p.do(chromedp.Navigate(px.url() + "/"))
	p.wait(`window.playground && document.querySelector('#editor .cm-editor') !== null`, 20*time.Second)

	t.Run("without a key the page says 401", func(t *testing.T) {
		p := p.with(t)
		p.do(chromedp.Click(chromedp.ID("run")))
		p.wait(`document.getElementById('banner').textContent.includes('Unauthorized')`, 20*time.Second)
	})

	t.Run("key entry is kept in local storage", func(t *testing.T) {
		p := p.with(t)
		p.do(chromedp.SendKeys(chromedp.ID("key"), testKey), chromedp.Click(chromedp.ID("savekey")))
		if stored := eval[string](p, `localStorage.getItem('codegw.key')`); stored != testKey {
			t.Fatalf("localStorage key %q", stored)
		}
		p.do(chromedp.Reload())
		p.wait(`window.playground && document.querySelector('#editor .cm-editor') !== null`, 20*time.Second)
		if shown := eval[string](p, `document.getElementById('key').value`); shown != testKey {
			t.Fatalf("after a reload the key field holds %q", shown)
		}
	})

	t.Run("typed code runs", func(t *testing.T) {
		p := p.with(t)
		p.do(js(`playground.editor.setValue('')`),
			chromedp.Click(chromedp.CSS("#editor .cm-content")),
			chromedp.SendKeys(chromedp.CSS("#editor .cm-content"), "print(6 * 7)"),
			chromedp.KeyEvent(kb.Enter, chromedp.KeyModifiers(chromedp.ModifierShift)))
		p.wait(`document.querySelector('#cells .cell') !== null`, 30*time.Second)
		id := eval[string](p, `document.querySelector('#cells .cell').dataset.id`)
		if st := p.done(id, 60*time.Second); st != "ok" {
			t.Fatalf("status %q", st)
		}
		if out := p.stdout(id); out != "42\n" {
			t.Fatalf("stdout %q", out)
		}
		if n := eval[int](p, `document.querySelectorAll('#editor .cm-line span').length`); n == 0 {
			t.Error("the editor shows no highlighted tokens")
		}
	})

	t.Run("lines stream as they are printed", func(t *testing.T) {
		p := p.with(t)
		id := p.submit("import time\nfor w in ['alpha', 'beta', 'gamma']:\n    print(w, flush=True)\n    time.sleep(1.0)\n")
		var seen []string
		var seenAt []time.Time
		deadline := time.Now().Add(60 * time.Second)
		for time.Now().Before(deadline) {
			out := p.stdout(id)
			if out != "" && (len(seen) == 0 || seen[len(seen)-1] != out) {
				seen, seenAt = append(seen, out), append(seenAt, time.Now())
			}
			if eval[string](p, cellJS(id)+`.dataset.done || ''`) == "1" {
				break
			}
			time.Sleep(25 * time.Millisecond)
		}
		want := []string{"alpha\n", "alpha\nbeta\n", "alpha\nbeta\ngamma\n"}
		if strings.Join(seen, "|") != strings.Join(want, "|") {
			t.Fatalf("output states %q, want %q (each line shown before the next is printed)", seen, want)
		}
		for i := 1; i < len(seenAt); i++ {
			if gap := seenAt[i].Sub(seenAt[i-1]); gap < 500*time.Millisecond {
				t.Errorf("line %d appeared %v after the previous one; the code sleeps 1 s between them", i+1, gap)
			}
		}
		if st := p.done(id, 10*time.Second); st != "ok" {
			t.Fatalf("status %q", st)
		}
		count := eval[string](p, cellJS(id)+`.querySelector('.count').textContent`)
		dur := eval[string](p, cellJS(id)+`.querySelector('.duration').textContent`)
		if !strings.HasPrefix(count, "In [") || count == "In [ ]" || !strings.HasSuffix(dur, " s") {
			t.Errorf("execution count %q, duration %q", count, dur)
		}
	})

	t.Run("a matplotlib plot shows inline", func(t *testing.T) {
		p := p.with(t)
		id, _ := p.runOK("import matplotlib.pyplot as plt\nplt.plot([1, 3, 2, 4])\nplt.title('codegw')\nplt.show()\n", 60*time.Second)
		img := cellJS(id) + `.querySelector('img')`
		p.wait(img+` && `+img+`.complete`, 20*time.Second)
		if w := eval[int](p, img+`.naturalWidth`); w == 0 {
			t.Fatal("the plot's <img> has naturalWidth 0")
		}
	})

	t.Run("a DataFrame renders as a table", func(t *testing.T) {
		p := p.with(t)
		id, _ := p.runOK("import pandas as pd\npd.DataFrame({'city': ['Oslo', 'Lima', 'Pune'], 'pop_m': [0.7, 10.1, 7.4]})\n", 60*time.Second)
		frame := cellJS(id) + `.querySelector('iframe.html-output')`
		p.wait(frame+` && `+frame+`.contentDocument && `+frame+`.contentDocument.querySelectorAll('table tbody tr').length === 3`, 20*time.Second)
		if text := eval[string](p, frame+`.contentDocument.querySelector('table').innerText`); !strings.Contains(text, "Lima") || !strings.Contains(text, "10.1") {
			t.Errorf("table text %q", text)
		}
		if sb := eval[string](p, frame+`.getAttribute('sandbox')`); strings.Contains(sb, "allow-scripts") {
			t.Errorf("the html frame allows scripts: sandbox=%q", sb)
		}
		p.wait(frame+`.getBoundingClientRect().height > 60`, 5*time.Second)
	})
	p.screenshot(shots, "playground-session.png")

	t.Run("input() is answered in the page", func(t *testing.T) {
		p := p.with(t)
		id := p.submit("name = input('Your name? ')\nprint('hello', name)\n")
		p.wait(cellJS(id)+`.querySelector('.input-form') !== null`, 60*time.Second)
		if got := p.text(`.cell[data-id="` + id + `"] .input-form span`); got != "Your name? " {
			t.Errorf("prompt %q", got)
		}
		p.do(chromedp.SendKeys(chromedp.CSS(`.cell[data-id="`+id+`"] .input-reply`), "Ada"+kb.Enter))
		if st := p.done(id, 30*time.Second); st != "ok" {
			t.Fatalf("status %q", st)
		}
		if out := p.stdout(id); !strings.Contains(out, "hello Ada\n") {
			t.Fatalf("stdout %q", out)
		}
	})

	t.Run("Interrupt stops time.sleep(100)", func(t *testing.T) {
		p := p.with(t)
		id := p.submit("import time\nprint('sleeping', flush=True)\ntime.sleep(100)\nprint('woke')\n")
		p.wait(cellJS(id)+`.dataset.status === 'running' && `+cellJS(id)+`.innerText.includes('sleeping')`, 60*time.Second)
		p.wait(`!document.getElementById('interrupt').disabled`, 5*time.Second)
		// An interrupt that reaches ipykernel right after the flush of a
		// print is sometimes lost (about 1 run in 3 here); the gateway's own
		// interrupt tests wait too. A person does not press that fast.
		time.Sleep(500 * time.Millisecond)
		start := time.Now()
		p.do(chromedp.Click(chromedp.ID("interrupt")))
		p.wait(`playground.session.sent.includes('interrupt')`, 5*time.Second)
		if st := p.done(id, 30*time.Second); st != "interrupted" {
			t.Fatalf("status %q, want interrupted", st)
		}
		if d := time.Since(start); d > 15*time.Second {
			t.Errorf("interrupt took %v", d)
		}
		if out := p.stdout(id); out != "sleeping\n" {
			t.Errorf("stdout %q", out)
		}
		if tb := eval[string](p, cellJS(id)+`.querySelector('.traceback').textContent`); !strings.Contains(tb, "KeyboardInterrupt") {
			t.Errorf("traceback %q", tb)
		}
	})

	t.Run("Restart loses the variables", func(t *testing.T) {
		p := p.with(t)
		p.runOK("kept = 1\n", 30*time.Second)
		p.do(chromedp.Click(chromedp.ID("restart")))
		p.wait(`document.getElementById('banner').textContent.includes('Kernel restarted')`, 90*time.Second)
		_, out := p.runOK("print('kept' in globals())\n", 30*time.Second)
		if out != "False\n" {
			t.Fatalf("after a restart: stdout %q", out)
		}
	})

	t.Run("error messages name the cause", func(t *testing.T) {
		p := p.with(t)
		for _, tc := range []struct {
			status int
			code   string
			want   string
		}{
			{401, "unauthorized", "Unauthorized"},
			{404, "not_found", "Not found"},
			{410, "session_lost", "Session lost"},
			{0, "session_lost", "Session lost"},
			{429, "limit", "Too many requests"},
			{503, "busy", "Service unavailable"},
			{0, "unavailable", "Service unavailable"},
		} {
			msg := eval[string](p, fmt.Sprintf(`playground.describe(%d, %q, "the server's words")`, tc.status, tc.code))
			if !strings.HasPrefix(msg, tc.want) || !strings.Contains(msg, "the server's words") {
				t.Errorf("%d %s: %q", tc.status, tc.code, msg)
			}
		}
	})

	t.Run("a dropped file is uploaded into /code/input", func(t *testing.T) {
		p := p.with(t)
		src := filepath.Join(t.TempDir(), "data.txt")
		if err := os.WriteFile(src, []byte("dropped bytes 123"), 0o644); err != nil {
			t.Fatal(err)
		}
		type point struct{ X, Y float64 }
		at := eval[point](p, `(() => { const r = document.getElementById('dropzone').getBoundingClientRect(); return {X: r.x + r.width / 2, Y: r.y + r.height / 2}; })()`)
		data := &input.DragData{Items: []*input.DragDataItem{}, Files: []string{src}, DragOperationsMask: 1}
		for _, typ := range []input.DispatchDragEventType{input.DispatchDragEventTypeDragEnter, input.DispatchDragEventTypeDragOver, input.DispatchDragEventTypeDrop} {
			if _, err := chromedp.Call(ctx, input.DispatchDragEvent, input.DispatchDragEventParams{Type: typ, X: at.X, Y: at.Y, Data: data}); err != nil {
				t.Fatalf("%s: %v", typ, err)
			}
		}
		p.wait(`document.getElementById('inputs').textContent.includes('/code/input/data.txt')`, 30*time.Second)
		_, out := p.runOK("print(open('/code/input/data.txt').read())\n", 30*time.Second)
		if out != "dropped bytes 123\n" {
			t.Fatalf("stdout %q", out)
		}
	})

	t.Run("an output file is listed as soon as it is written", func(t *testing.T) {
		p := p.with(t)
		id := p.submit("import time\nopen('/code/output/live.csv', 'w').write('1')\nprint('written', flush=True)\ntime.sleep(10)\n")
		// Listed while the cell still runs, not when it ends.
		p.wait(`Array.from(document.querySelectorAll('#files a.file-link')).some(a => a.textContent === 'live.csv') && `+cellJS(id)+`.dataset.done !== "1"`, 9*time.Second)
		if st := p.done(id, 30*time.Second); st != "ok" {
			t.Fatalf("status %q", st)
		}
	})

	t.Run("an output file is listed and its link downloads it", func(t *testing.T) {
		p := p.with(t)
		dl := t.TempDir()
		if _, err := chromedp.CallBrowser(ctx, browser.SetDownloadBehavior, browser.SetDownloadBehaviorParams{Behavior: browser.SetDownloadBehaviorBehaviorAllow, DownloadPath: dl}); err != nil {
			t.Fatal(err)
		}
		content := "city,pop_m\nOslo,0.7\nLima,10.1\n"
		p.runOK(fmt.Sprintf("with open('/code/output/report.csv', 'w') as f:\n    f.write(%q)\n", content), 30*time.Second)
		p.wait(`Array.from(document.querySelectorAll('#files a.file-link')).some(a => a.textContent === 'report.csv')`, 10*time.Second)
		p.do(chromedp.Click(chromedp.Search(`//ul[@id="files"]//a[text()="report.csv"]`)))
		var got []byte
		testwait.For(t, 30*time.Second, "report.csv downloaded", func() string {
			b, err := os.ReadFile(filepath.Join(dl, "report.csv"))
			if err == nil && len(b) == len(content) {
				got = b
				return ""
			}
			entries, _ := os.ReadDir(dl)
			return fmt.Sprintf("the download dir holds %v", entries)
		})
		if string(got) != content {
			t.Fatalf("downloaded %q, want %q", got, content)
		}
	})

	t.Run("a network drop mid-execution loses no output", func(t *testing.T) {
		p := p.with(t)
		id := p.submit("import time\nfor i in range(10):\n    print(i, flush=True)\n    time.sleep(0.4)\n")
		p.wait(cellJS(id)+`.innerText.includes('2\n')`, 60*time.Second)
		if n := px.drop(); n == 0 {
			t.Fatal("the proxy had no connection to drop")
		}
		p.wait(`playground.session.reconnects >= 1`, 30*time.Second)
		if st := p.done(id, 30*time.Second); st != "ok" {
			t.Fatalf("status %q", st)
		}
		want := "0\n1\n2\n3\n4\n5\n6\n7\n8\n9\n"
		if out := p.stdout(id); out != want {
			t.Fatalf("stdout after the drop %q, want %q", out, want)
		}
	})

	setMode := func(mode string) chromedp.Action[chromedp.Void] {
		return js(fmt.Sprintf(`(() => { const m = document.getElementById('mode'); m.value = %q; m.dispatchEvent(new Event('change')); })()`, mode))
	}
	t.Run("stateless mode streams NDJSON", func(t *testing.T) {
		p := p.with(t)
		p.do(setMode("stateless"))
		defer p.do(setMode("session"))
		id, _ := p.runOK("import matplotlib.pyplot as plt\nprint('stateless', flush=True)\nplt.bar(['a', 'b'], [3, 5])\nplt.show()\n", 90*time.Second)
		if mode := eval[string](p, cellJS(id)+`.dataset.mode`); mode != "stateless" {
			t.Errorf("cell mode %q", mode)
		}
		if out := p.stdout(id); out != "stateless\n" {
			t.Errorf("stdout %q", out)
		}
		img := cellJS(id) + `.querySelector('img')`
		p.wait(img+` && `+img+`.naturalWidth > 0`, 20*time.Second)
	})
	p.screenshot(shots, "playground-full.png")

	// The README's picture: the page's own sample (streamed lines, a plot, a
	// table) in a viewport-sized shot.
	t.Run("the sample runs", func(t *testing.T) {
		p := p.with(t)
		p.do(chromedp.Click(chromedp.ID("clear")), js(`window.scrollTo(0, 0)`))
		id, _ := p.runOK(sampleCode, 60*time.Second)
		p.wait(cellJS(id)+`.querySelector('img') && `+cellJS(id)+`.querySelector('img').naturalWidth > 0 && `+cellJS(id)+`.querySelector('iframe')`, 20*time.Second)
		time.Sleep(300 * time.Millisecond) // the frame sizes itself on load
		buf, err := chromedp.Run(p.ctx, chromedp.CaptureScreenshot())
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(shots, "playground.png"), buf, 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("screenshot %s", filepath.Join(shots, "playground.png"))
	})

	t.Run("a deleted session is reported", func(t *testing.T) {
		p := p.with(t)
		id := eval[string](p, `playground.session.id`)
		req, _ := http.NewRequest("DELETE", base+"/api/v1/sessions/"+id, nil)
		req.Header.Set("Authorization", "Bearer "+testKey)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode/100 != 2 {
			t.Fatalf("DELETE: %s", resp.Status)
		}
		p.wait(`document.getElementById('banner').textContent.includes('session ended')`, 20*time.Second)
	})

	t.Run("an unknown session says 404", func(t *testing.T) {
		p := p.with(t)
		p.do(js(`sessionStorage.setItem('codegw.session', 'nosuchsession')`), chromedp.Reload())
		p.wait(`document.getElementById('banner').textContent.includes('Not found')`, 30*time.Second)
		if stored := eval[*string](p, `sessionStorage.getItem('codegw.session')`); stored != nil {
			t.Errorf("the dead session id stays stored: %q", *stored)
		}
	})
}
