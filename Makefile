# isthmus — see README.md. Every target builds or installs what it needs.
SHELL   := /bin/bash
MODULES := tunnel certs egress cni proxy-server proxy-agent isthmus deploy integration
BIN     := $(CURDIR)/bin
VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
COMMIT  ?= $(shell git rev-parse HEAD 2>/dev/null || echo unknown)
GO      ?= go
# --version, the start-up log line and build_info say which build runs.
LDFLAGS := -X isthmus.dev/tunnel/buildinfo.version=$(VERSION) -X isthmus.dev/tunnel/buildinfo.commit=$(COMMIT)

.PHONY: all build image demo docs test test-unit test-integration fuzz fuzz-short soak bench lint deps clean

all: build

build:
	@mkdir -p $(BIN)
	$(GO) build -trimpath -ldflags "$(LDFLAGS)" -o $(BIN)/ \
		isthmus.dev/proxy-server/cmd/proxy-server \
		isthmus.dev/proxy-agent/cmd/proxy-agent \
		isthmus.dev/isthmus/cmd/isthmus
	@echo "built: $(BIN)/proxy-server $(BIN)/proxy-agent $(BIN)/isthmus"

# The container image: the same three binaries (static, CGO_ENABLED=0) for
# linux/amd64, linux/arm64 and linux/arm/v7 in one image index, user
# 65532:65532, no shell, written as an OCI image layout tarball (no registry,
# no daemon) named IMAGE_REF. Reproducible: file times are the commit's time.
# Import: ctr images import --all-platforms bin/isthmus-image.tar
IMAGE_REF         ?= localhost/isthmus:$(VERSION)
SOURCE_DATE_EPOCH ?= $(shell git log -1 --format=%ct 2>/dev/null || echo 0)
image:
	@mkdir -p $(BIN)
	$(GO) run isthmus.dev/deploy/cmd/isthmus-image --output $(BIN)/isthmus-image.tar \
		--ref "$(IMAGE_REF)" --image-version "$(VERSION)" --commit "$(COMMIT)" \
		--ldflags "$(LDFLAGS)" --created "$(SOURCE_DATE_EPOCH)"

# A real server, agent and backend on this machine, traffic through the tunnel.
demo: build
	$(BIN)/isthmus demo --bin-dir $(BIN)

# System packages the namespace tests use. As root they are installed when
# missing; otherwise those tests skip and say why.
# etcd-server is for the kube-apiserver end-to-end test; containerd (with
# runc and ctr) for the container image test; iptables, ipset and
# util-linux's nsenter/unshare for the two-node pod-network test
# (kube-router and felix program the nodes' firewalls).
deps:
	@if ! command -v nft >/dev/null || ! command -v ip >/dev/null || ! command -v etcd >/dev/null || ! command -v ctr >/dev/null || ! command -v containerd >/dev/null || ! command -v iptables >/dev/null || ! command -v ipset >/dev/null || ! command -v nsenter >/dev/null; then \
		if [ "$$(id -u)" = 0 ]; then \
			echo "installing iproute2, nftables, iptables, ipset, etcd-server and containerd for the network-namespace, kube-apiserver, pod-network and container image tests"; \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iproute2 nftables iptables ipset util-linux etcd-server containerd >/dev/null; \
		else \
			echo "note: not root and nft/ip/etcd/containerd/iptables/ipset missing: network-namespace, kube-apiserver, pod-network and container image tests will skip"; \
		fi; \
	fi

# Every test of every module, with the race detector, then a short run of
# every fuzz target.
test: deps lint
	@set -e; for m in $(MODULES); do \
		echo "=== go test -race $$m"; \
		(cd $$m && $(GO) test -race -count=1 -timeout 60m ./...); \
	done
	@$(MAKE) --no-print-directory fuzz-short

# Every fuzz target (each func FuzzX of a _test.go file) for FUZZTIME, one
# after the other, with go test -fuzz; a table of the executions at the end.
# A failing input is written to the target's testdata/fuzz/ and fails the
# run. Longer: make fuzz FUZZTIME=10m.
FUZZTIME  ?= 1m
FUZZSHORT ?= 10s
fuzz:
	@FUZZTIME=$(FUZZTIME) GO="$(GO)" hack/fuzz.sh $(MODULES)

# What make test runs: each fuzz target for FUZZSHORT.
fuzz-short:
	@FUZZTIME=$(FUZZSHORT) GO="$(GO)" hack/fuzz.sh $(MODULES)

# The network faults and load tests of integration/reliability, round
# after round for DURATION (every link and frontend), then each fuzz
# target for SOAK_FUZZTIME; prints the tables of faults, bounds, load
# (goroutines, descriptors, RSS before, at peak, after) and fuzz
# executions. Needs root for the network namespaces, as make test does.
DURATION      ?= 10m
SOAK_FUZZTIME ?= 30s
soak: deps
	@DURATION=$(DURATION) SOAK_FUZZTIME=$(SOAK_FUZZTIME) GO="$(GO)" hack/soak.sh $(MODULES)

test-unit: lint
	@set -e; for m in tunnel certs egress cni proxy-server proxy-agent isthmus deploy; do \
		(cd $$m && $(GO) test -race -count=1 ./...); \
	done

test-integration: deps
	cd integration && $(GO) test -race -count=1 -timeout 60m ./...

# Regenerate the generated parts of docs/ (metric tables, the ANP flag and
# metric tables) from the code; `make test` fails while they differ.
docs:
	cd integration && $(GO) test -count=1 -run TestGeneratedDocs ./docs -update

# Throughput and latency through the tunnel next to direct loopback TCP.
bench:
	cd integration && $(GO) test -run '^$$' -bench . -benchtime 1x -count 1 -timeout 30m ./bench/

lint:
	@out=$$(gofmt -l $(MODULES)); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	@set -e; for m in $(MODULES); do (cd $$m && $(GO) vet ./...); done

clean:
	rm -rf $(BIN)
