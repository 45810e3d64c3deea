// Command proxy-server is the isthmus proxy server: a drop-in for
// Konnectivity's proxy-server. Agents dial in on the agent port; clients
// (kube-apiserver) reach backends behind them through the frontend. The
// command line is package app; this file runs it.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/pflag"

	"isthmus.dev/proxy-server/app"
	"isthmus.dev/proxy-server/server"
	"isthmus.dev/tunnel/flagcompat"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return
		}
		fmt.Fprintln(os.Stderr, app.Program+":", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	cmd, err := app.Parse(args, os.Stderr)
	if err != nil {
		return err
	}
	if cmd.Version() {
		flagcompat.PrintVersion(os.Stdout, app.Program)
		return nil
	}
	log, closer, err := cmd.Logging.Logger()
	if err != nil {
		return err
	}
	defer closer.Close()
	srv, err := server.New(cmd.Config, log)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	go func() {
		<-ctx.Done()
		stop() // a second signal kills the process the default way
	}()
	return srv.Run(ctx)
}
