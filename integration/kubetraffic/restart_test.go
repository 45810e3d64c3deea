package kubetraffic

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"isthmus.dev/integration/harness"
)

// outcome is how one kind of traffic took the agent's death, or its
// return: what happened, how long it took, and what went wrong.
type outcome struct {
	kind string
	took time.Duration
	err  error
}

// concurrently runs each check at once and returns their outcomes in order.
func concurrently(checks map[string]func() error, order []string) []outcome {
	out := make([]outcome, len(order))
	var wg sync.WaitGroup
	for i, kind := range order {
		wg.Go(func() {
			start := time.Now()
			err := checks[kind]()
			out[i] = outcome{kind: kind, took: time.Since(start), err: err}
		})
	}
	wg.Wait()
	return out
}

func summary(outs []outcome) (string, error) {
	var parts []string
	var errs []error
	for _, o := range outs {
		parts = append(parts, fmt.Sprintf("%s %v", o.kind, o.took.Round(10*time.Millisecond)))
		if o.err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", o.kind, o.err))
		}
	}
	return strings.Join(parts, ", "), errors.Join(errs...)
}

// cleanFailure is how long a kind of traffic may take to fail once the
// agent is gone: kube-apiserver's own timeouts for a dial (webhook 10 s)
// are well inside it; a kind still hanging after it did not fail cleanly.
const cleanFailure = time.Minute

// failsWithin runs f with a context of d and wants an error back before
// that context ends: an error of its own, not the timeout's.
func failsWithin(d time.Duration, what string, f func(ctx context.Context) error) error {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	err := f(ctx)
	switch {
	case err == nil:
		return fmt.Errorf("%s succeeded with the agent gone", what)
	case ctx.Err() != nil:
		return fmt.Errorf("%s still hanging after %v: %w", what, d, err)
	}
	return nil
}

// worksWithin retries f until it succeeds, up to d: the server has to see
// the agent again, and kube-apiserver's aggregator to find its API server
// available again.
func worksWithin(d time.Duration, f func(ctx context.Context) error) error {
	deadline := time.Now().Add(d)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		err := f(ctx)
		cancel()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("still failing %v after the agent came back: %w", d, err)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// agentRestartScenario kills the agent while an exec, a port-forwarded
// connection and a `logs -f` run through it: each must end (not hang), and
// webhook calls, aggregated API requests and new execs must fail with an
// error, not hang, while it is gone. Then the agent starts again and each
// kind works again.
func agentRestartScenario(t *testing.T, s *stack) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	if err := s.waitAPIServiceAvailable(ctx, 2*time.Minute); err != nil {
		return "", err
	}
	// Streams open through the agent, each shown to work.
	o, err := s.openStreams(ctx, backendPort, "before the kill")
	if err != nil {
		return "", err
	}
	defer o.close()
	ex, fwd := o.exec, o.conn
	if err := echoOn(fwd, "before the kill"); err != nil {
		return "", fmt.Errorf("port-forwarded connection: %w", err)
	}
	logs, logLines, err := s.followLogs(ctx)
	if err != nil {
		return "", err
	}
	defer logs.stop()
	if err := s.logLineArrives(logLines, "before the kill"); err != nil {
		return "", err
	}

	s.agent.Kill()
	down := concurrently(map[string]func() error{
		"exec": func() error {
			return failsWithin(cleanFailure, "the running exec", func(ctx context.Context) error {
				return ex.roundTrip("after the kill", time.Until(deadlineOf(ctx)))
			})
		},
		"port-forward": func() error {
			// Read only: kubectl ends the local connection when it sees
			// the pod's side end (a write would have it notice sooner).
			_ = fwd.SetReadDeadline(time.Now().Add(cleanFailure))
			n, err := fwd.Read(make([]byte, 1))
			if ne, ok := errors.AsType[net.Error](err); ok && ne.Timeout() {
				return fmt.Errorf("the port-forwarded connection still open after %v", cleanFailure)
			}
			if n > 0 {
				return errors.New("the port-forwarded connection received data with the agent gone")
			}
			return nil
		},
		"logs -f": func() error {
			// Lines written before the kill may still be on their way;
			// nothing is written after it.
			timeout := time.After(cleanFailure)
			for {
				select {
				case _, ok := <-logLines:
					if !ok {
						return nil
					}
				case <-timeout:
					return fmt.Errorf("kubectl logs -f still running after %v", cleanFailure)
				}
			}
		},
		"webhook": func() error {
			return failsWithin(cleanFailure, "a create under the webhook", func(ctx context.Context) error {
				return s.createAnswered(ctx, "while-down")
			})
		},
		"aggregated": func() error {
			return failsWithin(cleanFailure, "an aggregated API request", func(ctx context.Context) error {
				return s.getPing(ctx, "while-down")
			})
		},
		"new exec": func() error {
			return failsWithin(cleanFailure, "a new kubectl exec", func(ctx context.Context) error {
				return s.command(ctx, "exec", podName, "-c", container, "--", "true").Run()
			})
		},
	}, []string{"exec", "port-forward", "logs -f", "webhook", "aggregated", "new exec"})
	downNote, downErr := summary(down)

	s.agent.StartAgain(t)
	restarted := time.Now()
	if err := s.waitReady(time.Minute); err != nil {
		return "", err
	}
	const again = 2 * time.Minute
	up := concurrently(map[string]func() error{
		"exec": func() error {
			return worksWithin(again, func(ctx context.Context) error {
				e, err := s.startExec(ctx)
				if err != nil {
					return err
				}
				defer e.close()
				return e.roundTrip("after the restart", time.Until(deadlineOf(ctx)))
			})
		},
		"port-forward": func() error {
			return worksWithin(again, func(ctx context.Context) error {
				k, addr, err := s.portForward(ctx, backendPort)
				if err != nil {
					return err
				}
				defer k.stop()
				return echoThrough(ctx, addr, 1<<20, 7)
			})
		},
		"logs -f": func() error {
			return worksWithin(again, func(ctx context.Context) error {
				k, lines, err := s.followLogs(ctx)
				if err != nil {
					return err
				}
				defer k.stop()
				return s.logLineArrives(lines, "after the restart")
			})
		},
		"webhook": func() error {
			n := 0
			return worksWithin(again, func(ctx context.Context) error {
				n++
				return s.createAnswered(ctx, "after-restart-"+strconv.Itoa(n))
			})
		},
		"aggregated": func() error {
			return worksWithin(again, func(ctx context.Context) error { return s.getPing(ctx, "after-restart") })
		},
	}, []string{"exec", "port-forward", "logs -f", "webhook", "aggregated"})
	upNote, upErr := summary(up)
	note := fmt.Sprintf("with the agent killed, failed in: %s; after its restart (ready in %v) worked again in: %s",
		downNote, time.Since(restarted).Round(100*time.Millisecond), upNote)
	if err := errors.Join(downErr, upErr); err != nil {
		return note, err
	}
	return note, nil
}

func deadlineOf(ctx context.Context) time.Time {
	d, _ := ctx.Deadline()
	return d
}

// echoOn sends msg on c, a connection to the echo backend, and reads it back.
func echoOn(c net.Conn, msg string) error {
	if _, err := c.Write([]byte(msg)); err != nil {
		return err
	}
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(c, buf); err != nil {
		return err
	}
	if string(buf) != msg {
		return fmt.Errorf("%q came back for %q", buf, msg)
	}
	return nil
}

// followLogs starts `kubectl logs -f --tail=0`: lines written from now on.
func (s *stack) followLogs(ctx context.Context) (*running, <-chan string, error) {
	k, err := s.start(ctx, "logs", "-f", "--tail=0", podName, "-c", container)
	if err != nil {
		return nil, nil, err
	}
	lines := make(chan string, 64)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(k.stdout)
		for sc.Scan() {
			select {
			case lines <- sc.Text():
			default: // nobody waits for it
			}
		}
	}()
	return k, lines, nil
}

// logLineArrives writes line to the container's log, every 200 ms until
// it arrives on lines (kubectl logs -f may not be following yet), up to a
// minute.
func (s *stack) logLineArrives(lines <-chan string, line string) error {
	f, err := os.OpenFile(s.logPath, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	deadline := time.After(time.Minute)
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for {
		if _, err := fmt.Fprintln(f, line); err != nil {
			return err
		}
		select {
		case got, ok := <-lines:
			if !ok {
				return fmt.Errorf("kubectl logs -f ended before %q arrived", line)
			}
			if got == line {
				return nil
			}
		case <-tick.C:
		case <-deadline:
			return fmt.Errorf("%q written to the log did not arrive through kubectl logs -f within a minute", line)
		}
	}
}

// waitReady waits up to d for the server's readiness once the agent
// started again (the agent's own health port is on the worker's loopback,
// out of reach): it is ready when it holds an agent again.
func (s *stack) waitReady(d time.Duration) error {
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if harness.HTTPStatus(s.srv.ReadyURL()) == http.StatusOK {
			return nil
		}
		select {
		case <-s.agent.Exited():
			return fmt.Errorf("the agent exited after its restart: %s", tailOf(s.agent.Output()))
		case <-time.After(100 * time.Millisecond):
		}
	}
	return fmt.Errorf("the server did not hold the agent again within %v of its restart", d)
}
