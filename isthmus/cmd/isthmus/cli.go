package main

// The command-line convention every isthmus command follows:
//
//   - --help, -h and "help" print the usage to stdout and exit 0.
//   - A usage error (unknown command or flag, missing required flag, bad
//     value) prints "isthmus CMD: what is wrong" and a one-line hint to
//     stderr and exits 2 (exitUsage); commands return it as a *usageError
//     (usageErrorf).
//   - A failed check (certs check, preflight, egress validate, cni
//     validate) or any other failure exits 1 (exitFailure).
//   - The report (what was written, flags to use, a table) goes to stdout;
//     errors and notes to stderr. Commands get both writers in an env, so
//     tests run them without globals.
//   - A command that writes files takes its destination from a flag and
//     never writes into the current directory unasked; when any target
//     exists it writes nothing unless --force (see writeFiles).

import (
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"

	"github.com/spf13/pflag"
)

// Exit statuses of every command.
const (
	exitOK      = 0 // success, or --help
	exitFailure = 1 // a check failed, or the work could not be done
	exitUsage   = 2 // the command line is wrong
)

// env is what a command gets from the process: where its report (Stdout)
// and its notes (Stderr) go. The error a command returns is printed once,
// by execute; a command never prints it itself.
type env struct {
	Stdout, Stderr io.Writer
}

// command is a command of a group: run gets the arguments after its name.
type command struct {
	name string
	run  func(e env, args []string) error
}

// usageError is a wrong command line: exit status 2, and a hint to run the
// command with --help.
type usageError struct{ err error }

func (u *usageError) Error() string { return u.err.Error() }
func (u *usageError) Unwrap() error { return u.err }

// usageErrorf is a usage error; the message names the flag at fault and
// the values it takes.
func usageErrorf(format string, a ...any) error {
	return &usageError{err: fmt.Errorf(format, a...)}
}

// asUsage marks err (a bad flag value found after parsing) as a usage error.
func asUsage(err error) error {
	if err == nil {
		return nil
	}
	return &usageError{err: err}
}

// cmdError carries the full name of the command an error came from
// ("isthmus certs ca"), for the message and the hint.
type cmdError struct {
	cmd string
	err error
}

func (c *cmdError) Error() string { return c.err.Error() }
func (c *cmdError) Unwrap() error { return c.err }

// execute runs the command line args and returns the exit status, having
// printed the error and, for a usage error, the hint.
func execute(e env, args []string) int {
	err := dispatch(e, args)
	if err == nil || errors.Is(err, pflag.ErrHelp) {
		return exitOK
	}
	cmd := "isthmus"
	var ce *cmdError
	if errors.As(err, &ce) {
		cmd = ce.cmd
	}
	fmt.Fprintf(e.Stderr, "%s: %v\n", cmd, err)
	var ue *usageError
	if errors.As(err, &ue) {
		fmt.Fprintf(e.Stderr, "Run '%s --help' for usage.\n", cmd)
		return exitUsage
	}
	return exitFailure
}

// isHelp reports whether arg asks for help.
func isHelp(arg string) bool { return arg == "-h" || arg == "--help" || arg == "help" }

// subDispatch runs the command args[0] of group (e.g. "isthmus certs").
// No command at all prints the usage to stderr as a usage error; "help CMD"
// is "CMD --help".
func subDispatch(e env, group, usage string, cmds []command, args []string) error {
	if len(args) == 0 {
		fmt.Fprint(e.Stderr, usage)
		return &cmdError{cmd: group, err: usageErrorf("no command given")}
	}
	if isHelp(args[0]) {
		if len(args) > 1 && args[0] == "help" {
			return subDispatch(e, group, usage, cmds, append(slices.Clone(args[1:]), "--help"))
		}
		fmt.Fprint(e.Stdout, usage)
		return pflag.ErrHelp
	}
	i := slices.IndexFunc(cmds, func(c command) bool { return c.name == args[0] })
	if i < 0 {
		names := make([]string, len(cmds))
		for j, c := range cmds {
			names[j] = c.name
		}
		what := fmt.Sprintf("unknown command %q", args[0])
		if strings.HasPrefix(args[0], "-") {
			what = fmt.Sprintf("unknown flag %s: give a command first, then its flags", args[0])
		}
		return &cmdError{cmd: group, err: usageErrorf("%s (commands: %s)", what, strings.Join(names, ", "))}
	}
	err := cmds[i].run(e, args[1:])
	var ce *cmdError
	if err == nil || errors.Is(err, pflag.ErrHelp) || errors.As(err, &ce) {
		return err
	}
	return &cmdError{cmd: group + " " + cmds[i].name, err: err}
}

// newFlagSet is a command's flag set: --help prints usage and the flags
// to stdout; parse errors are returned, not printed.
func newFlagSet(e env, name, usage string) *pflag.FlagSet {
	fs := pflag.NewFlagSet(name, pflag.ContinueOnError)
	fs.SortFlags = false
	fs.SetOutput(e.Stderr)
	fs.Usage = func() { fmt.Fprint(e.Stdout, usage, "\nFlags:\n", fs.FlagUsages()) }
	return fs
}

// parseFlags parses args; a parse error (unknown flag, bad value) is a
// usage error; --help is pflag.ErrHelp.
func parseFlags(fs *pflag.FlagSet, args []string) error {
	err := fs.Parse(args)
	if err == nil || errors.Is(err, pflag.ErrHelp) {
		return err
	}
	return &usageError{err: err}
}

// parseNoArgs is parseFlags for a command that takes flags only.
func parseNoArgs(fs *pflag.FlagSet, args []string) error {
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usageErrorf("unexpected arguments %q (everything is a flag)", fs.Args())
	}
	return nil
}

// required is the usage error of a missing required flag.
func required(flag, what string) error {
	return usageErrorf("%s is required: %s", flag, what)
}
