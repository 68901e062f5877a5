# Warren's build, test and demo entry points. Every target installs what it
# needs (Debian packages, Go tools) idempotently, so `make demo` and
# `make test` work on a fresh machine.

GO        ?= go
BIN       := bin
PKGS      := ./...
# Debian packages the tests and the demo use: iptables for the iptables
# capture backend (the default nftables backend needs no binary), nftables
# and iproute2 for the tests that list rules, routes and namespaces.
APT_PKGS  := iptables nftables iproute2
APT_BINS  := iptables-restore iptables-save nft ip
# The real-cluster tests (test/cluster) also run containerd, runc and the
# reference CNI plugins from Debian, as a node would; conntrack is for
# kube-proxy.
TEST_APT_PKGS := containerd runc containernetworking-plugins conntrack
TEST_APT_BINS := containerd runc /usr/lib/cni/bridge conntrack
HELM_VERSION  := v4.3.1

.PHONY: all build deps test-deps test test-unit vet fmt-check demo demo-root bench clean kube-bins helm images manifests

all: build

# deps installs missing Debian packages only; a machine that has them all
# never runs apt.
deps:
	@missing=""; for b in $(APT_BINS); do command -v $$b >/dev/null 2>&1 || missing=1; done; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" != 0 ]; then echo "make: missing tools ($(APT_BINS)); run as root to install $(APT_PKGS)" >&2; exit 1; fi; \
		echo "installing $(APT_PKGS)"; \
		DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(APT_PKGS) >/dev/null; \
	fi

# test-deps adds what only the tests need, the same way.
test-deps: deps helm
	@missing=""; for b in $(TEST_APT_BINS); do command -v $$b >/dev/null 2>&1 || test -x $$b || missing=1; done; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" != 0 ]; then echo "make: missing $(TEST_APT_PKGS); run as root to install them" >&2; exit 1; fi; \
		echo "installing $(TEST_APT_PKGS)"; \
		DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(TEST_APT_PKGS) >/dev/null; \
	fi

# helm (v4, from the Go module proxy) lints and renders the chart in the
# deploy tests and installs it in the real-cluster tests; reinstalled only
# when bin/helm is missing or another version.
helm:
	@if ! $(GO) version -m $(BIN)/helm 2>/dev/null | grep -qE "^\s+mod\s+helm.sh/helm/v4\s+$(HELM_VERSION)(\s|$$)"; then \
		echo "installing helm $(HELM_VERSION) into $(BIN)"; \
		GOBIN=$(CURDIR)/$(BIN) $(GO) install helm.sh/helm/v4/cmd/helm@$(HELM_VERSION); \
	fi

build:
	@mkdir -p $(BIN)
	CGO_ENABLED=0 $(GO) build -o $(BIN)/ ./cmd/...

# images writes Warren's container image (static binaries only, no base
# image) as a docker-archive tarball: load it with `ctr -n k8s.io images
# import bin/warren-image.tar` or push it with any registry tool.
IMAGE ?= ghcr.io/warren-mesh/warren:dev
images:
	@mkdir -p $(BIN)/static
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags='-s -w' -o $(BIN)/static/ ./cmd/warren-agent ./cmd/warren-controller ./cmd/warren-cni ./cmd/warrenctl
	$(GO) run ./cmd/warren-image -bin $(BIN)/static -ref $(IMAGE) -o $(BIN)/warren-image.tar

# manifests regenerates deploy/manifests/warren.yaml from the chart.
manifests: helm
	$(BIN)/helm template warren deploy/helm/warren --namespace warren-system --include-crds > deploy/manifests/warren.yaml

vet:
	$(GO) vet $(PKGS)

fmt-check:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

# test runs every tier with the race detector: unit tests, in-process
# integration, and (as root) the network-namespace end-to-end suite, whose
# agents are race-enabled builds too (the harness fails a test whose agent
# reported a data race).
test: test-deps fmt-check vet kube-bins
	@mkdir -p $(BIN)/race
	$(GO) build -race -o $(BIN)/race/ ./cmd/...
	WARREN_BIN=$(CURDIR)/$(BIN)/race $(GO) test -race -count=1 -timeout 25m $(PKGS)

# kube-bins builds (once; cached in ~/.cache/warren) the etcd and
# kube-apiserver that the Kubernetes integration tests run (5-13 minutes
# cold on 2 cores), then the kubelet, kube-controller-manager,
# kube-scheduler and kube-proxy of the real-cluster tests (~6 minutes
# more); instant afterwards.
kube-bins:
	$(GO) test ./test/kube -run '^TestBuild(Node)?$$' -count=1 -timeout 40m

test-unit:
	$(GO) test -count=1 -short $(PKGS)

demo: demo-root deps build
	$(BIN)/warrenctl demo --agent $(BIN)/warren-agent

# demo-root stops `make demo` before anything else when not root.
demo-root:
	@if [ "$$(id -u)" != 0 ]; then echo "make demo: needs root (it builds network namespaces, veth links and capture rules); run it as root" >&2; exit 1; fi

# bench runs the benchmark harness (test/bench, see BENCHMARKS.md): plain
# TCP, stunnel and Warren on the network-namespace testbed, then the Go
# micro-benchmarks through benchstat. It writes bench-results/results.json,
# bench-results/ratios.png and the generated section of BENCHMARKS.md, and
# takes about 20 minutes. `make bench BENCH_FLAGS=-smoke` checks the harness
# in seconds. Tools: iperf3, stunnel4 and taskset from Debian; fortio and
# benchstat built into $(BIN) at pinned versions.
BENCH_APT_PKGS    := iperf3 stunnel4 util-linux
BENCH_APT_BINS    := iperf3 stunnel4 taskset
FORTIO_VERSION    := v1.66.0
BENCHSTAT_VERSION := v0.0.0-20260908200009-22c9c6c9d4da
BENCH_FLAGS       ?=

bench: deps build
	@if [ "$$(id -u)" != 0 ]; then echo "make bench: needs root (it builds network namespaces and runs the agents); run it as root" >&2; exit 1; fi
	@missing=""; for b in $(BENCH_APT_BINS); do command -v $$b >/dev/null 2>&1 || missing=1; done; \
	if [ -n "$$missing" ]; then \
		echo "installing $(BENCH_APT_PKGS)"; \
		DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(BENCH_APT_PKGS) >/dev/null; \
	fi
	@if [ "$$($(BIN)/fortio version 2>/dev/null)" != "$(FORTIO_VERSION:v%=%)" ]; then \
		echo "installing fortio $(FORTIO_VERSION) into $(BIN)"; \
		GOBIN=$(CURDIR)/$(BIN) $(GO) install fortio.org/fortio@$(FORTIO_VERSION); \
	fi
	@test -x $(BIN)/benchstat || { echo "installing benchstat into $(BIN)"; \
		GOBIN=$(CURDIR)/$(BIN) $(GO) install golang.org/x/perf/cmd/benchstat@$(BENCHSTAT_VERSION); }
	$(GO) build -o $(BIN)/ ./test/bench/cmd/warren-bench
	$(BIN)/warren-bench -agent $(BIN)/warren-agent -fortio $(BIN)/fortio -benchstat $(BIN)/benchstat \
		-out bench-results -md BENCHMARKS.md $(BENCH_FLAGS)

clean:
	rm -rf $(BIN)
