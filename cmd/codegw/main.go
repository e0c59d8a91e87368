// Command codegw is the code interpreter gateway: it runs untrusted Python
// in IPython kernels (local sandboxed processes or Docker containers) and
// serves the stateless and session APIs over HTTP and websocket.
//
// main only reads the configuration (config.go), sets up logging and
// handles signals; package app builds and closes the service.
//
// The runtime does not re-read the cgroup CPU limit every second to adjust
// GOMAXPROCS (Go 1.25's updatemaxprocs): that wake-up was most of an idle
// gateway's CPU. The limit in force at start is still applied.
//
//go:debug updatemaxprocs=0
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/codegw/codegw/app"
)

func main() {
	err := dispatch(os.Args[1:])
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(2)
	}
	if err != nil {
		if !errors.Is(err, errFailed) {
			fmt.Fprintln(os.Stderr, "codegw:", err)
		}
		os.Exit(1)
	}
}

// dispatch runs the subcommand in args; none (or serve) is the gateway.
func dispatch(args []string) error {
	if len(args) == 0 || args[0] == "serve" {
		return run()
	}
	if cmd, ok := commands[args[0]]; ok {
		return cmd(args[1:])
	}
	if args[0] == "help" || args[0] == "-h" || args[0] == "--help" {
		fmt.Print(usage)
		return nil
	}
	fmt.Fprint(os.Stderr, usage)
	return fmt.Errorf("unknown command %q", args[0])
}

func run() error {
	cfg, err := LoadConfig()
	if err != nil {
		return err
	}
	var level slog.Level
	level.UnmarshalText([]byte(cfg.LogLevel)) // checked by LoadConfig
	opts := &slog.HandlerOptions{Level: level}
	if cfg.LogFormat == "json" {
		cfg.Logger = slog.New(slog.NewJSONHandler(os.Stderr, opts))
	} else {
		cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, opts))
	}
	slog.SetDefault(cfg.Logger)

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	a, err := app.Open(ctx, cfg)
	if err != nil {
		return err
	}
	addr := a.Addr()
	errc := make(chan error, 1)
	go func() { errc <- a.Listen() }()
	cfg.Logger.Info("codegw listening", "addr", "http://"+addr, "executor", cfg.Executor, "pool", cfg.PoolSize, "instance", cfg.InstanceID)
	// SIGUSR1 announces the shutdown (a Kubernetes preStop hook): client
	// connections close after their next answer, serving goes on.
	usr1 := make(chan os.Signal, 1)
	signal.Notify(usr1, syscall.SIGUSR1)
	defer signal.Stop(usr1)
	go func() {
		if _, ok := <-usr1; ok {
			a.Leave()
		}
	}()
	select {
	case err = <-errc:
		err = fmt.Errorf("listen %s: %w", addr, err)
	case <-ctx.Done():
		stop() // a second signal ends the process at once
		cfg.Logger.Info("shutting down")
		a.Drain(cfg.DrainTimeout)
	}
	a.Close()
	return err
}
