# isthmus — see README.md. Every target builds or installs what it needs.
SHELL   := /bin/bash
MODULES := tunnel certs egress cni proxy-server proxy-agent isthmus integration
BIN     := $(CURDIR)/bin
VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
COMMIT  ?= $(shell git rev-parse HEAD 2>/dev/null || echo unknown)
GO      ?= go
# --version, the start-up log line and build_info say which build runs.
LDFLAGS := -X isthmus.dev/tunnel/buildinfo.version=$(VERSION) -X isthmus.dev/tunnel/buildinfo.commit=$(COMMIT)

.PHONY: all build demo test test-unit test-integration bench lint deps clean

all: build

build:
	@mkdir -p $(BIN)
	$(GO) build -trimpath -ldflags "$(LDFLAGS)" -o $(BIN)/ \
		isthmus.dev/proxy-server/cmd/proxy-server \
		isthmus.dev/proxy-agent/cmd/proxy-agent \
		isthmus.dev/isthmus/cmd/isthmus
	@echo "built: $(BIN)/proxy-server $(BIN)/proxy-agent $(BIN)/isthmus"

# A real server, agent and backend on this machine, traffic through the tunnel.
demo: build
	$(BIN)/isthmus demo --bin-dir $(BIN)

# System packages the namespace tests use. As root they are installed when
# missing; otherwise those tests skip and say why.
# etcd-server is for the kube-apiserver end-to-end test.
deps:
	@if ! command -v nft >/dev/null || ! command -v ip >/dev/null || ! command -v etcd >/dev/null; then \
		if [ "$$(id -u)" = 0 ]; then \
			echo "installing iproute2, nftables and etcd-server for the network-namespace and kube-apiserver tests"; \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iproute2 nftables iptables etcd-server >/dev/null; \
		else \
			echo "note: not root and nft/ip/etcd missing: network-namespace and kube-apiserver tests will skip"; \
		fi; \
	fi

# Every test of every module, with the race detector.
test: deps lint
	@set -e; for m in $(MODULES); do \
		echo "=== go test -race $$m"; \
		(cd $$m && $(GO) test -race -count=1 -timeout 60m ./...); \
	done

test-unit: lint
	@set -e; for m in tunnel certs egress cni proxy-server proxy-agent isthmus; do \
		(cd $$m && $(GO) test -race -count=1 ./...); \
	done

test-integration: deps
	cd integration && $(GO) test -race -count=1 -timeout 60m ./...

# Throughput and latency through the tunnel next to direct loopback TCP.
bench:
	cd integration && $(GO) test -run '^$$' -bench . -benchtime 1x -count 1 -timeout 30m ./bench/

lint:
	@out=$$(gofmt -l $(MODULES)); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	@set -e; for m in $(MODULES); do (cd $$m && $(GO) vet ./...); done

clean:
	rm -rf $(BIN)
