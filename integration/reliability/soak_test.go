package reliability

import (
	"fmt"
	"io"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"

	agentapp "isthmus.dev/proxy-agent/app"
	serverapp "isthmus.dev/proxy-server/app"
	"isthmus.dev/tunnel/limits"
)

// soakEnv is how long TestSoak runs (a Go duration, e.g. 10m); unset, it
// skips. soakTableEnv, if set, is a file the table is written to as well.
const (
	soakEnv      = "ISTHMUS_SOAK"
	soakTableEnv = "ISTHMUS_SOAK_TABLE"
)

// maxSoakRounds bounds the rounds of a soak, whatever its duration.
const maxSoakRounds = 1000

// TestSoak runs every fault and load scenario, in their long form, round
// after round until $ISTHMUS_SOAK has passed (a round that started runs to
// its end; at least one runs), then prints the table: each scenario's runs,
// failures, figures, and the load tests' usage before, at peak and after.
// make soak DURATION=10m runs it.
func TestSoak(t *testing.T) {
	v := os.Getenv(soakEnv)
	if v == "" {
		t.Skipf("the soak runs only when asked: make soak DURATION=10m (sets %s)", soakEnv)
	}
	d, err := time.ParseDuration(v)
	if err != nil || d <= 0 {
		t.Fatalf("%s=%q: want a positive Go duration such as 10m or 1h30m", soakEnv, v)
	}
	// A round that started runs to its end: up to half an hour past d.
	if dl, ok := t.Deadline(); ok && time.Until(dl) < d+30*time.Minute {
		t.Fatalf("go test -timeout leaves %v; a soak of %v needs %v or more (SOAK_TIMEOUT for make soak)",
			time.Until(dl).Round(time.Minute), d, d+30*time.Minute)
	}
	var ta tally
	start := time.Now()
	scs := append(faultScenarios(), loadScenarios()...)
	rounds := 0
	for rounds < maxSoakRounds && (rounds == 0 || time.Since(start) < d) {
		rounds++
		t.Logf("soak round %d (%v of %v gone)", rounds, time.Since(start).Round(time.Second), d)
		t.Run(fmt.Sprintf("round-%d", rounds), func(t *testing.T) {
			runAll(t, scs, opts{long: true}, ta.add)
		})
	}
	table := ta.render(time.Since(start)) + boundsTable()
	table += fmt.Sprintf("\n%d rounds of %d scenarios in %v (asked for %v; a round that started runs to its end).\n",
		rounds, len(scs), time.Since(start).Round(time.Second), d)
	fmt.Print(table)
	if path := os.Getenv(soakTableEnv); path != "" {
		if err := os.WriteFile(path, []byte(table), 0o644); err != nil {
			t.Errorf("writing the soak table to %s: %v", path, err)
		}
	}
}

// boundsTable lists each bound the daemons enforce: the flag that sets it
// and its default, read from the daemons' own flag sets, and the label of
// limit_hits_total that counts its hits.
func boundsTable() string {
	server := serverapp.New().FlagSet()
	server.SetOutput(io.Discard)
	agent, _, _ := agentapp.NewFlagSet(io.Discard)
	var b strings.Builder
	b.WriteString("\nBounds: each a flag with a default; a hit counts in limit_hits_total{limit} and is logged (rate limited)\n\n")
	b.WriteString("| daemon | limit | flag | default |\n|---|---|---|---|\n")
	for _, d := range []struct {
		name   string
		fs     *pflag.FlagSet
		limits []string
	}{{"proxy-server", server, limits.ServerLimits}, {"proxy-agent", agent, limits.AgentLimits}} {
		for _, l := range d.limits {
			def := "(no such flag)"
			if f := d.fs.Lookup(limits.Flags[l]); f != nil {
				def = f.DefValue
			}
			fmt.Fprintf(&b, "| %s | %s | --%s | %s |\n", d.name, l, limits.Flags[l], def)
		}
	}
	return b.String()
}

// The soak's bounds table has a row with a default for every bound.
func TestBoundsTable(t *testing.T) {
	tb := boundsTable()
	t.Log(tb)
	if strings.Contains(tb, "(no such flag)") {
		t.Fatalf("a bound's flag is missing:\n%s", tb)
	}
	for _, l := range append(append([]string(nil), limits.ServerLimits...), limits.AgentLimits...) {
		if !strings.Contains(tb, "| "+l+" | --"+limits.Flags[l]+" | ") {
			t.Errorf("no row for %s:\n%s", l, tb)
		}
	}
}
