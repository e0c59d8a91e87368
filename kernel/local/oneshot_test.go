package local

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/codegw/codegw/kernel"
)

// Tests of one-shot kernels (kernel.Spec.OneShot): children of the zygote
// that run stateless cells in its prepared shell, sandboxed as forked
// kernels are, and driven by the same kernel.Kernel.

// launchOneShot starts a one-shot kernel and returns it ready.
func launchOneShot(t *testing.T, p *Provisioner) *kernel.Kernel {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	k, err := kernel.Launch(ctx, p, kernel.Spec{ID: newID(), OneShot: true}, kernel.LaunchOptions{Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := k.Close(ctx); err != nil {
			t.Errorf("close: %v", err)
		}
	})
	if !k.Process().(*Process).OneShot() || k.Info().Implementation != "codegw-oneshot" {
		t.Fatalf("not a one-shot kernel: %+v", k.Info())
	}
	return k
}

// runOne runs code on k within dl and returns what it printed.
func runOne(t *testing.T, k *kernel.Kernel, code string, dl kernel.Deadline, limit int) (result, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), execTimeout)
	defer cancel()
	var r result
	var out, errOut strings.Builder
	reply, err := k.Execute(ctx, code, kernel.ExecuteOptions{StoreHistory: true, OutputLimit: limit, OnMessage: func(m *kernel.Message) {
		switch m.Header.MsgType {
		case "stream":
			var s struct{ Name, Text string }
			json.Unmarshal(m.Content, &s)
			if s.Name == "stdout" {
				out.WriteString(s.Text)
			} else {
				errOut.WriteString(s.Text)
			}
		case "display_data", "execute_result":
			var d struct{ Data map[string]json.RawMessage }
			json.Unmarshal(m.Content, &d)
			for mime := range d.Data {
				r.mimes = append(r.mimes, mime)
			}
		}
	}}, dl)
	r.stdout, r.stderr, r.reply = out.String(), errOut.String(), reply
	return r, err
}

func TestOneShot(t *testing.T) {
	requireBwrap(t)
	p := newProvisioner(t, Config{Sandbox: SandboxBwrap, Memory: 512 << 20, PidsLimit: 64})
	if !p.MakesOneShots() {
		t.Fatal("the provisioner makes no one-shot kernels")
	}

	t.Run("sandbox", func(t *testing.T) {
		k := launchOneShot(t, p)
		r, err := runOne(t, k, `import os, socket
print(os.getpid(), os.getuid(), socket.gethostname(), os.getcwd(), sorted(os.listdir('/code')))
s = socket.socket()
try:
    s.settimeout(1); s.connect(('1.1.1.1', 80)); print('network')
except OSError:
    print('no network')
print(open('/proc/self/status').read().split('CapEff:')[1].split()[0])`, kernel.Deadline{}, 0)
		if err != nil || r.reply.Status != "ok" {
			t.Fatalf("%v %+v", err, r)
		}
		want := "1 65534 codegw /code ['input', 'output']\nno network\n0000000000000000\n"
		if r.stdout != want {
			t.Errorf("got %q, want %q", r.stdout, want)
		}
	})

	t.Run("devices", func(t *testing.T) {
		// /dev's nodes, made with mknod in /dev's tmpfs (the zygote runs as
		// root here), work for the kernel's uid, which can make none.
		k := launchOneShot(t, p)
		r, err := runOne(t, k, `import os, stat
print(sorted(os.listdir('/dev')))
print([oct(stat.S_IMODE(os.stat('/dev/' + n).st_mode)) for n in ('null', 'zero', 'full', 'random', 'urandom') if stat.S_ISCHR(os.stat('/dev/' + n).st_mode)])
print(os.stat('/dev/null').st_dev == os.stat('/dev').st_dev)
open('/dev/null', 'w').write('x'); print(open('/dev/zero', 'rb').read(3), len(open('/dev/urandom', 'rb').read(16)))
try:
    os.write(os.open('/dev/full', os.O_WRONLY), b'x')
except OSError as e:
    print('full', e.errno == 28)
try:
    os.mknod('/tmp/null', 0o666 | stat.S_IFCHR, os.makedev(1, 3)); print('made a node')
except PermissionError:
    print('no mknod')`, kernel.Deadline{}, 0)
		if err != nil || r.reply.Status != "ok" {
			t.Fatalf("%v %+v", err, r)
		}
		want := "['fd', 'full', 'null', 'random', 'shm', 'stderr', 'stdin', 'stdout', 'tty', 'urandom', 'zero']\n" +
			"['0o666', '0o666', '0o666', '0o666', '0o666']\nTrue\nb'\\x00\\x00\\x00' 16\nfull True\nno mknod\n"
		if r.stdout != want {
			t.Errorf("got %q, want %q", r.stdout, want)
		}
	})

	t.Run("isolation", func(t *testing.T) {
		a, b := launchOneShot(t, p), launchOneShot(t, p)
		set := `import os, json, random, subprocess
open('/tmp/x', 'w').write('a'); open('/code/output/a.txt', 'w').write('a')
os.environ['CGW_X'] = '1'; json.CGW_X = 1
subprocess.Popen(['sleep', '1000'])
print(random.random())`
		check := `import os, json, random, subprocess
print(os.path.exists('/tmp/x'), os.listdir('/code/output'), 'CGW_X' in os.environ, hasattr(json, 'CGW_X'))
print([p for p in os.listdir('/proc') if p.isdigit()])
print(random.random())`
		ra, err := runOne(t, a, set, kernel.Deadline{}, 0)
		if err != nil || ra.reply.Status != "ok" {
			t.Fatalf("%v %+v", err, ra)
		}
		rb, err := runOne(t, b, check, kernel.Deadline{}, 0)
		if err != nil || rb.reply.Status != "ok" {
			t.Fatalf("%v %+v", err, rb)
		}
		lines := strings.Split(strings.TrimSpace(rb.stdout), "\n")
		// Only pid 1, the kernel: nothing of a's.
		if len(lines) != 3 || lines[0] != "False [] False False" || lines[1] != "['1']" {
			t.Errorf("b sees a's state: %q", rb.stdout)
		}
		if lines[len(lines)-1] == strings.TrimSpace(ra.stdout) {
			t.Errorf("both drew the same random number %s: not reseeded", ra.stdout)
		}
		if _, err := os.Stat(filepath.Join(a.Process().Dir(), "output", "a.txt")); err != nil {
			t.Errorf("a's output file: %v", err)
		}
	})

	t.Run("network namespace of an ended kernel", func(t *testing.T) {
		// a listens on lo (tcp and an abstract unix socket), with a
		// background process; once a is closed its network namespace serves
		// b, in which nothing of a's listens any more, and lo is up.
		a := launchOneShot(t, p)
		ra, err := runOne(t, a, `import os, socket, subprocess
t = socket.socket(); t.bind(('127.0.0.1', 0)); t.listen()
u = socket.socket(socket.AF_UNIX); u.bind(b'\0codegw-netns-test'); u.listen()
subprocess.Popen(['sleep', '1000'], pass_fds=[t.fileno(), u.fileno()])
print(os.readlink('/proc/self/ns/net'), t.getsockname()[1])`, kernel.Deadline{}, 0)
		if err != nil || ra.reply.Status != "ok" {
			t.Fatalf("%v %+v", err, ra)
		}
		ns, port, _ := strings.Cut(strings.TrimSpace(ra.stdout), " ")
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := a.Close(ctx); err != nil {
			t.Fatal(err)
		}
		b := launchOneShot(t, p)
		rb, err := runOne(t, b, `import os, socket
print(os.readlink('/proc/self/ns/net'), sorted(n for _, n in socket.if_nameindex()))
for family, addr in ((socket.AF_INET, ('127.0.0.1', `+port+`)), (socket.AF_UNIX, b'\0codegw-netns-test')):
    try:
        socket.socket(family).connect(addr); print('connected to a')
    except OSError as e:
        print('refused', type(e).__name__)
u = socket.socket(socket.AF_UNIX); u.bind(b'\0codegw-netns-test'); u.listen()
t = socket.socket(); t.bind(('127.0.0.1', 0)); t.listen()
socket.create_connection(t.getsockname(), timeout=3).close(); print('lo up')`, kernel.Deadline{}, 0)
		if err != nil || rb.reply.Status != "ok" {
			t.Fatalf("%v %+v", err, rb)
		}
		want := ns + " ['lo']\nrefused ConnectionRefusedError\nrefused ConnectionRefusedError\nlo up\n"
		if rb.stdout != want {
			t.Errorf("b, started after a ended: got %q, want %q", rb.stdout, want)
		}
	})

	t.Run("timeout", func(t *testing.T) {
		k := launchOneShot(t, p)
		r, err := runOne(t, k, "import time\nprint('started', flush=True)\ntime.sleep(60)", kernel.Deadline{Timeout: 500 * time.Millisecond, Grace: 5 * time.Second}, 0)
		var de *kernel.DeadlineError
		if !errors.As(err, &de) || de.Killed || de.Timeout == 0 {
			t.Fatalf("want a timeout without kill, got %v", err)
		}
		if r.reply == nil || r.reply.EName != "KeyboardInterrupt" || r.stdout != "started\n" {
			t.Errorf("reply %+v, stdout %q", r.reply, r.stdout)
		}
		// The interrupt left the kernel usable.
		if r, err := runOne(t, k, "print(1)", kernel.Deadline{}, 0); err != nil || r.stdout != "1\n" {
			t.Errorf("after the interrupt: %q %v", r.stdout, err)
		}
		k2 := launchOneShot(t, p)
		_, err = runOne(t, k2, "import signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\ntime.sleep(60)", kernel.Deadline{Timeout: 300 * time.Millisecond, Grace: 500 * time.Millisecond}, 0)
		if !errors.As(err, &de) || !de.Killed {
			t.Fatalf("want a kill after the grace, got %v", err)
		}
	})

	t.Run("input", func(t *testing.T) {
		k := launchOneShot(t, p)
		r, err := runOne(t, k, "input('name? ')", kernel.Deadline{Timeout: 10 * time.Second}, 0)
		if err != nil || r.reply.EName != "StdinNotImplementedError" || !strings.Contains(r.reply.EValue, "does not support input requests") {
			t.Fatalf("%v %+v", err, r.reply)
		}
	})

	t.Run("died", func(t *testing.T) {
		k := launchOneShot(t, p)
		_, err := runOne(t, k, "import os; os._exit(3)", kernel.Deadline{}, 0)
		if !errors.Is(err, kernel.ErrDied) || !strings.Contains(err.Error(), "status 3") {
			t.Fatalf("got %v", err)
		}
		k = launchOneShot(t, p)
		_, err = runOne(t, k, "import ctypes; ctypes.string_at(0)", kernel.Deadline{}, 0)
		if !errors.Is(err, kernel.ErrDied) || !strings.Contains(err.Error(), "SIGSEGV") {
			t.Fatalf("got %v", err)
		}
	})

	t.Run("limits", func(t *testing.T) {
		if p.cg == nil {
			t.Skip("no cgroups here")
		}
		k := launchOneShot(t, p)
		_, err := runOne(t, k, "x = []\nwhile True: x.append(bytearray(16 << 20))", kernel.Deadline{}, 0)
		if e, ok := k.Exit(); !errors.Is(err, kernel.ErrDied) || !ok || !e.OOMKilled {
			t.Errorf("memory bomb: %v %+v", err, e)
		}
		k = launchOneShot(t, p)
		_, err = runOne(t, k, "import os, time\nwhile True:\n    try: os.fork()\n    except OSError: os._exit(1)", kernel.Deadline{Timeout: 20 * time.Second}, 0)
		if e, ok := k.Exit(); err == nil || !ok || !e.PidsLimited {
			t.Errorf("fork bomb: %v %+v", err, e)
		}
	})

	t.Run("flood", func(t *testing.T) {
		k := launchOneShot(t, p)
		// 200 MB printed: the kernel sends its limit and one more
		// character, and drops the rest itself.
		start := time.Now()
		r, err := runOne(t, k, "print('x' * (200 << 20))\nprint('done')", kernel.Deadline{Timeout: 60 * time.Second}, 1<<20)
		if err != nil || r.reply.Status != "ok" || len(r.stdout) != 1<<20+1 {
			t.Fatalf("%v, %d bytes of stdout", err, len(r.stdout))
		}
		t.Logf("200 MB print: %v", time.Since(start))
		// Without a limit everything arrives, in order, at the reader's pace.
		r, err = runOne(t, k, "for i in range(20000): print(i)", kernel.Deadline{Timeout: 60 * time.Second}, 0)
		if err != nil || !strings.HasPrefix(r.stdout, "0\n1\n") || !strings.HasSuffix(r.stdout, "\n19999\n") || strings.Count(r.stdout, "\n") != 20000 {
			t.Fatalf("%v, %d bytes", err, len(r.stdout))
		}
	})

	t.Run("display", func(t *testing.T) {
		k := launchOneShot(t, p)
		r, err := runOne(t, k, "import matplotlib.pyplot as plt, pandas as pd\nplt.plot([1, 2]); plt.figure(); plt.plot([2, 1])\ndisplay(pd.DataFrame({'a': [1]}))\n1+1", kernel.Deadline{}, 0)
		if err != nil || r.reply.Status != "ok" {
			t.Fatalf("%v %+v", err, r)
		}
		got := strings.Join(r.mimes, " ")
		if strings.Count(got, "image/png") != 2 || !strings.Contains(got, "text/html") {
			t.Errorf("outputs: %s", got)
		}
	})
}
