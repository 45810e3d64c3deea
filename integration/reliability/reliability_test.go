package reliability

import (
	"testing"
)

// faultScenarios are the network faults, on each link and frontend.
func faultScenarios() []scenario {
	var out []scenario
	for _, link := range links {
		for _, fe := range frontends {
			out = append(out,
				scenario{name: "delay and loss", link: link, frontend: fe,
					run: func(t *testing.T, w *row, o opts) { delayLoss(t, w, o, link, fe) }},
				scenario{name: "black hole", link: link, frontend: fe,
					run: func(t *testing.T, w *row, o opts) { blackhole(t, w, link, fe) }},
				scenario{name: "link down and up", link: link, frontend: fe,
					run: func(t *testing.T, w *row, o opts) { linkDown(t, w, link, fe) }},
				scenario{name: "server address moves", link: link, frontend: fe,
					run: func(t *testing.T, w *row, o opts) { moveServer(t, w, link, fe) }},
			)
		}
	}
	return out
}

// loadScenarios are the load tests: 10,000 connections on each link and
// frontend, 1,000 agents on each frontend.
func loadScenarios() []scenario {
	var out []scenario
	for _, link := range links {
		for _, fe := range frontends {
			out = append(out, scenario{name: "10,000 connections", link: link, frontend: fe,
				run: func(t *testing.T, w *row, o opts) { tenThousand(t, w, link, fe) }})
		}
	}
	for _, fe := range frontends {
		out = append(out, scenario{name: "1,000 agents", link: "native+anp", frontend: fe,
			run: func(t *testing.T, w *row, o opts) { thousandAgents(t, w, fe) }})
	}
	return out
}

// runAll runs scs in parallel, each as a subtest of t, and hands their
// rows to out; it returns when all have ended.
func runAll(t *testing.T, scs []scenario, o opts, out func(Row)) {
	t.Run("group", func(t *testing.T) {
		for _, sc := range scs {
			runScenario(t, sc, o, out)
		}
	})
}

func TestNetworkFaults(t *testing.T) { runAll(t, faultScenarios(), opts{}, func(Row) {}) }

func TestLoad(t *testing.T) { runAll(t, loadScenarios(), opts{}, func(Row) {}) }
