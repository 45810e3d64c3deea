package docs

import (
	"context"
	"fmt"
	"os/exec"
	"regexp"
	"slices"
	"strings"
	"time"
)

// command is one command of a program as its --help describes it.
type command struct {
	path     []string
	flags    map[string]bool
	children []string // subcommands, from the help's "Commands:" list
}

// cli reads the programs' --help, once per command.
type cli struct {
	bins  map[string]string // program -> binary
	cache map[string]*command
}

func newCLI(bins map[string]string) *cli {
	return &cli{bins: bins, cache: map[string]*command{}}
}

var (
	helpFlag    = regexp.MustCompile(`^\s+(?:-([A-Za-z0-9]), )?--([A-Za-z0-9][\w-]*)`)
	helpCommand = regexp.MustCompile(`^  ([a-z][a-z0-9-]*)(?:\s|$)`)
)

// help runs "program path... --help" and reads its flags and subcommands.
func (c *cli) help(program string, path []string) (*command, error) {
	key := strings.Join(append([]string{program}, path...), " ")
	if cmd, ok := c.cache[key]; ok {
		return cmd, nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, c.bins[program], append(slices.Clone(path), "--help")...).CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("%s --help: %w\n%s", key, err, out)
	}
	cmd := &command{path: path, flags: map[string]bool{"help": true, "h": true}}
	inCommands := false
	for _, line := range strings.Split(string(out), "\n") {
		if m := helpFlag.FindStringSubmatch(line); m != nil {
			cmd.flags[m[2]] = true
			if m[1] != "" {
				cmd.flags[m[1]] = true
			}
		}
		switch {
		case strings.TrimSpace(line) == "Commands:":
			inCommands = true
		case inCommands && line != "" && !strings.HasPrefix(line, " "):
			inCommands = false
		case inCommands:
			if m := helpCommand.FindStringSubmatch(line); m != nil {
				cmd.children = append(cmd.children, m[1])
			}
		}
	}
	c.cache[key] = cmd
	return cmd, nil
}

// resolve finds the command an invocation calls: the program, then each
// word that names a subcommand. A word that is not a subcommand where the
// command has subcommands is an error.
func (c *cli) resolve(inv Invocation) (*command, error) {
	cmd, err := c.help(inv.Program, nil)
	if err != nil {
		return nil, err
	}
	for _, w := range inv.Words {
		if len(cmd.children) == 0 {
			break
		}
		if !slices.Contains(cmd.children, w) {
			if strings.ContainsAny(w, "$<>[]{}|.") || strings.ToUpper(w) == w {
				break // a placeholder or value, not a command name
			}
			return nil, fmt.Errorf("%q is not a command of %s (it has: %s)",
				w, strings.Join(append([]string{inv.Program}, cmd.path...), " "), strings.Join(cmd.children, ", "))
		}
		if cmd, err = c.help(inv.Program, append(slices.Clone(cmd.path), w)); err != nil {
			return nil, err
		}
	}
	return cmd, nil
}

// check reports what in inv does not exist.
func (c *cli) check(inv Invocation) error {
	cmd, err := c.resolve(inv)
	if err != nil {
		return err
	}
	var unknown []string
	for _, f := range inv.Flags {
		if !cmd.flags[f] && !c.below(inv.Program, cmd, f) {
			unknown = append(unknown, "--"+f)
		}
	}
	if len(unknown) > 0 {
		return fmt.Errorf("%s has no flag %s (its --help lists them)",
			strings.Join(append([]string{inv.Program}, cmd.path...), " "), strings.Join(unknown, ", "))
	}
	return nil
}

// below reports whether a subcommand of cmd has flag name: prose about a
// command group ("every isthmus certs command writes into --dir") means
// its commands' flags.
func (c *cli) below(program string, cmd *command, name string) bool {
	for _, child := range cmd.children {
		sub, err := c.help(program, append(slices.Clone(cmd.path), child))
		if err != nil {
			continue
		}
		if sub.flags[name] || c.below(program, sub, name) {
			return true
		}
	}
	return false
}

// loadAll reads the --help of every command of every program.
func (c *cli) loadAll() error {
	var walk func(program string, path []string) error
	walk = func(program string, path []string) error {
		cmd, err := c.help(program, path)
		if err != nil {
			if len(path) > 0 {
				return nil // a subcommand without --help has no flags to offer
			}
			return err
		}
		for _, child := range cmd.children {
			if err := walk(program, append(slices.Clone(path), child)); err != nil {
				return err
			}
		}
		return nil
	}
	for _, p := range Programs {
		if err := walk(p, nil); err != nil {
			return err
		}
	}
	return nil
}

// anyFlag reports whether some command of some program has flag name.
func (c *cli) anyFlag(name string) (bool, error) {
	if err := c.loadAll(); err != nil {
		return false, err
	}
	for _, cmd := range c.cache {
		if cmd.flags[name] {
			return true, nil
		}
	}
	return false, nil
}
