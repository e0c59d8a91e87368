package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/codegw/codegw"
	"github.com/codegw/codegw/client"
)

// defaultURL is where the CLI finds a gateway when neither --url nor
// CODEGW_URL says.
const defaultURL = "http://127.0.0.1:14564"

const usage = `usage: codegw [serve]                   run the gateway (configured by environment variables)
       codegw run [flags] FILE.py         run a file on a fresh kernel
       codegw exec -s SESSION [CODE...]   run code (arguments or stdin) in a session
       codegw session create|list|delete [ID...]
       codegw repl [-s SESSION]           interactive Python on a session
       codegw mcp [--url URL --key KEY]   MCP server over stdio (local kernels without --url)
Every client command takes --url and --key (or CODEGW_URL and CODEGW_KEY).
`

// errFailed is returned when the code ran and failed: the output said why,
// the exit status says so.
var errFailed = errors.New("the code failed")

// commands are the subcommands beside serve.
var commands = map[string]func(args []string) error{
	"run":     runFile,
	"exec":    execCode,
	"session": sessionCmd,
	"repl":    repl,
	"mcp":     serveMCP,
}

// clientFlags are the flags every client command takes.
type clientFlags struct {
	url, key string
}

func newFlags(name string) (*flag.FlagSet, *clientFlags) {
	fs := flag.NewFlagSet("codegw "+name, flag.ContinueOnError)
	cf := &clientFlags{}
	fs.StringVar(&cf.url, "url", os.Getenv("CODEGW_URL"), "gateway URL (env CODEGW_URL; default "+defaultURL+")")
	fs.StringVar(&cf.key, "key", os.Getenv("CODEGW_KEY"), "API key (env CODEGW_KEY)")
	return fs, cf
}

func (cf *clientFlags) client() (*client.Client, error) {
	u := cf.url
	if u == "" {
		u = defaultURL
	}
	return client.New(u, client.WithKey(cf.key))
}

// printer writes an execution's events to the terminal and saves images
// and files into dir.
type printer struct {
	c      *client.Client
	dir    string
	stdout io.Writer
	stderr io.Writer
	n      int
	failed bool
}

func (p *printer) handler(ctx context.Context) client.Handler {
	return client.Handler{
		Stdout: func(s string) { io.WriteString(p.stdout, s) },
		Stderr: func(s string) { io.WriteString(p.stderr, s) },
		Display: func(d client.Display) {
			if d.Image != nil {
				p.n++
				ext := strings.TrimPrefix(d.MIME, "image/")
				if ext == "svg+xml" {
					ext = "svg"
				}
				path := filepath.Join(p.dir, fmt.Sprintf("image-%d.%s", p.n, ext))
				if err := p.save(path, func(w io.Writer) error { _, err := w.Write(d.Image); return err }); err != nil {
					fmt.Fprintln(p.stderr, "codegw: save image:", err)
					return
				}
				fmt.Fprintf(p.stdout, "[image saved to %s]\n", path)
				return
			}
			text := d.Text
			if d.MIME != "text/plain" && d.Data != "" && d.Text == "" {
				text = d.Data
			}
			if text != "" {
				fmt.Fprintln(p.stdout, text)
			}
		},
		Error: func(ename, evalue string, tb []string) {
			p.failed = true
			if len(tb) > 0 {
				fmt.Fprintln(p.stderr, strings.Join(tb, "\n"))
			} else {
				fmt.Fprintf(p.stderr, "%s: %s\n", ename, evalue)
			}
		},
		File: func(f codegw.OutputFile) {
			path := filepath.Join(p.dir, filepath.Base(f.OriginalName))
			err := p.save(path, func(w io.Writer) error { _, err := p.c.Download(ctx, f.URL, w); return err })
			if err != nil {
				fmt.Fprintln(p.stderr, "codegw: download", f.OriginalName+":", err)
				return
			}
			fmt.Fprintf(p.stdout, "[file saved to %s]\n", path)
		},
	}
}

func (p *printer) save(path string, write func(io.Writer) error) error {
	if err := os.MkdirAll(p.dir, 0o755); err != nil {
		return err
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := write(f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// finish reports a failed answer (the traceback was printed already).
func (p *printer) finish(res *codegw.ExecuteResult) error {
	if res.Status == codegw.StatusOK {
		return nil
	}
	if res.Status != codegw.StatusError && res.Error != nil {
		fmt.Fprintf(p.stderr, "codegw: %s: %s\n", res.Status, *res.Error)
	}
	return errFailed
}

func runFile(args []string) error {
	fs, cf := newFlags("run")
	dir := fs.String("o", "codegw-output", "directory for images and files")
	timeout := fs.Float64("timeout", 0, "seconds before the code is interrupted (0: the server's limit)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return errors.New("usage: codegw run [--url URL] [--key KEY] [-o DIR] FILE.py")
	}
	code, err := os.ReadFile(fs.Arg(0))
	if err != nil {
		return err
	}
	c, err := cf.client()
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	p := &printer{c: c, dir: *dir, stdout: os.Stdout, stderr: os.Stderr}
	res, err := c.ExecuteStream(ctx, codegw.ExecuteRequest{Code: string(code), Timeout: *timeout}, p.handler(ctx))
	if err != nil {
		return err
	}
	return p.finish(res)
}

func execCode(args []string) error {
	fs, cf := newFlags("exec")
	id := fs.String("s", "", "session id (required)")
	dir := fs.String("o", "codegw-output", "directory for images and files")
	timeout := fs.Float64("timeout", 0, "seconds before the code is interrupted")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *id == "" {
		return errors.New("usage: codegw exec -s SESSION [CODE...] (code from stdin without arguments)")
	}
	code := strings.Join(fs.Args(), " ")
	if fs.NArg() == 0 {
		b, err := io.ReadAll(os.Stdin)
		if err != nil {
			return err
		}
		code = string(b)
	}
	c, err := cf.client()
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	s := c.Session(*id)
	p := &printer{c: c, dir: *dir, stdout: os.Stdout, stderr: os.Stderr}
	stopInterrupt := context.AfterFunc(ctx, func() { s.Interrupt(context.Background()) })
	defer stopInterrupt()
	res, err := s.ExecuteStream(context.WithoutCancel(ctx), codegw.ExecuteRequest{Code: code, Timeout: *timeout}, p.handler(ctx))
	if err != nil {
		return err
	}
	return p.finish(res)
}

func sessionCmd(args []string) error {
	if len(args) == 0 {
		return errors.New("usage: codegw session create|list|delete|pause|resume|checkpoint [ID...]")
	}
	fs, cf := newFlags("session " + args[0])
	idle := fs.Duration("idle", 0, "idle timeout of a new session (create)")
	from := fs.String("from", "", "start the new session from this session's state or this snapshot (ck_...) (create)")
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	c, err := cf.client()
	if err != nil {
		return err
	}
	ctx := context.Background()
	switch args[0] {
	case "create":
		opts := client.SessionOptions{IdleTimeout: *idle}
		if strings.HasPrefix(*from, "ck_") {
			opts.FromSnapshot = *from
		} else {
			opts.FromSession = *from
		}
		s, err := c.CreateSession(ctx, opts)
		if err != nil {
			return err
		}
		fmt.Println(s.ID)
	case "list":
		list, err := c.ListSessions(ctx)
		if err != nil {
			return err
		}
		tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "ID\tSTATE\tCREATED\tEXECUTIONS")
		for _, s := range list {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%d\n", s.ID, s.State, s.CreatedAt.Local().Format(time.DateTime), s.Executions)
		}
		tw.Flush()
	case "delete":
		if fs.NArg() == 0 {
			//lint:ignore ST1005 a usage line: "ID..." means one or more ids
			return errors.New("usage: codegw session delete ID...")
		}
		for _, id := range fs.Args() {
			if err := c.Session(id).Delete(ctx); err != nil {
				return err
			}
			fmt.Println("deleted", id)
		}
	case "pause", "resume", "checkpoint":
		if fs.NArg() == 0 {
			//lint:ignore ST1005 a usage line: "ID..." means one or more ids
			return fmt.Errorf("usage: codegw session %s ID...", args[0])
		}
		for _, id := range fs.Args() {
			s := c.Session(id)
			switch args[0] {
			case "pause":
				snap, err := s.Pause(ctx)
				if err != nil {
					return err
				}
				fmt.Printf("paused %s: snapshot %s, %d bytes, %d variables%s\n", id, snap.ID, snap.Bytes, len(snap.Variables), skippedNote(snap.Skipped))
			case "resume":
				r, err := s.Resume(ctx)
				if err != nil {
					return err
				}
				if r == nil {
					fmt.Printf("%s is running\n", id)
				} else {
					fmt.Printf("resumed %s: %s; %d variables%s\n", id, r.Message, len(r.Variables), skippedNote(r.Skipped))
				}
			case "checkpoint":
				snap, err := s.Checkpoint(ctx)
				if err != nil {
					return err
				}
				fmt.Printf("%s\t%d bytes, %d variables%s\n", snap.ID, snap.Bytes, len(snap.Variables), skippedNote(snap.Skipped))
			}
		}
	default:
		return fmt.Errorf("unknown session command %q: create, list, delete, pause, resume or checkpoint", args[0])
	}
	return nil
}

// skippedNote names the variables a snapshot could not carry.
func skippedNote(skipped []codegw.SkippedName) string {
	if len(skipped) == 0 {
		return ""
	}
	var b strings.Builder
	b.WriteString("; skipped:")
	for _, s := range skipped {
		fmt.Fprintf(&b, " %s (%s)", s.Name, s.Reason)
	}
	return b.String()
}
