package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"

	"github.com/chzyer/readline"

	"github.com/codegw/codegw"
	"github.com/codegw/codegw/client"
)

// repl is an interactive Python prompt on a session: line editing and
// history (readline), blocks continued until an empty line, Ctrl-C
// interrupts the running code (or clears the line at the prompt), images
// and files saved with their paths printed. The session is created for the
// repl and deleted at exit, unless -s names one.
func repl(args []string) error {
	fs, cf := newFlags("repl")
	id := fs.String("s", "", "session id to attach to (default: a new session, deleted at exit)")
	dir := fs.String("o", "codegw-output", "directory for images and files")
	if err := fs.Parse(args); err != nil {
		return err
	}
	c, err := cf.client()
	if err != nil {
		return err
	}
	ctx := context.Background()
	var s *client.Session
	if *id != "" {
		s = c.Session(*id)
	} else {
		if s, err = c.CreateSession(ctx, client.SessionOptions{}); err != nil {
			return err
		}
		defer s.Delete(context.Background())
	}
	rl, err := readline.NewEx(&readline.Config{Prompt: ">>> ", InterruptPrompt: "^C", EOFPrompt: "exit"})
	if err != nil {
		return err
	}
	defer rl.Close()
	out := rl.Stdout()
	conn, err := s.Connect(ctx, client.ConnectOptions{Events: func(ev codegw.Event) {
		if ev.Type == codegw.EventStatus && ev.State == "restarted" {
			fmt.Fprintln(out, "[kernel restarted]")
		}
	}})
	if err != nil {
		return err
	}
	defer conn.Close()
	fmt.Fprintf(out, "codegw session %s — Ctrl-C interrupts, Ctrl-D exits\n", s.ID)
	p := &printer{c: c, dir: *dir, stdout: out, stderr: rl.Stderr()}
	for {
		code, err := readBlock(rl)
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		if strings.TrimSpace(code) == "" {
			continue
		}
		if err := runInteractive(ctx, conn, p, rl, code); err != nil {
			return err
		}
	}
}

// readBlock reads one statement: a line, or a block opened by a line
// ending in ":" (or a continued bracket) up to an empty line.
func readBlock(rl *readline.Instance) (string, error) {
	rl.SetPrompt(">>> ")
	var lines []string
	for {
		line, err := rl.Readline()
		if errors.Is(err, readline.ErrInterrupt) {
			return "", nil
		}
		if err != nil {
			return "", err
		}
		lines = append(lines, line)
		code := strings.Join(lines, "\n")
		if !continues(code, line, len(lines)) {
			return code, nil
		}
		rl.SetPrompt("... ")
	}
}

// continues reports whether more lines belong to the statement so far.
func continues(code, last string, n int) bool {
	if n > 1 && strings.TrimSpace(last) == "" {
		return false
	}
	t := strings.TrimRight(last, " \t")
	if strings.HasSuffix(t, ":") || strings.HasSuffix(t, "\\") || n > 1 {
		return true
	}
	depth := 0
	for _, r := range code {
		switch r {
		case '(', '[', '{':
			depth++
		case ')', ']', '}':
			depth--
		}
	}
	return depth > 0
}

// runInteractive runs code, interrupting it on Ctrl-C (SIGINT: the
// terminal is out of raw mode while code runs).
func runInteractive(ctx context.Context, conn *client.Conn, p *printer, rl *readline.Instance, code string) error {
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt)
	defer signal.Stop(sig)
	done := make(chan struct{})
	defer close(done)
	go func() {
		for {
			select {
			case <-sig:
				conn.Interrupt()
			case <-done:
				return
			}
		}
	}()
	h := p.handler(ctx)
	h.Input = func(prompt string, password bool) (string, error) {
		rl.SetPrompt(prompt)
		if password {
			b, err := rl.ReadPassword(prompt)
			return string(b), err
		}
		return rl.Readline()
	}
	res, err := conn.Run(ctx, codegw.ExecuteRequest{Code: code}, h)
	if err != nil {
		return err
	}
	if res.Status == codegw.StatusInterrupted {
		fmt.Fprintln(p.stderr, "KeyboardInterrupt")
	} else {
		p.finish(res)
	}
	return nil
}
