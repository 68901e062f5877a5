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

.PHONY: all build deps test test-unit vet fmt-check demo bench clean

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

build:
	@mkdir -p $(BIN)
	CGO_ENABLED=0 $(GO) build -o $(BIN)/ ./cmd/...

vet:
	$(GO) vet $(PKGS)

fmt-check:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

# test runs every tier with the race detector: unit tests, in-process
# integration, and (as root) the network-namespace end-to-end suite, whose
# agents are race-enabled builds too (the harness fails a test whose agent
# reported a data race).
test: deps fmt-check vet
	@mkdir -p $(BIN)/race
	$(GO) build -race -o $(BIN)/race/ ./cmd/...
	WARREN_BIN=$(CURDIR)/$(BIN)/race $(GO) test -race -count=1 -timeout 25m $(PKGS)

test-unit:
	$(GO) test -count=1 -short $(PKGS)

demo: deps build
	@if [ "$$(id -u)" != 0 ]; then echo "make demo: needs root (it builds network namespaces, veth links and capture rules); run it as root" >&2; exit 1; fi
	$(BIN)/warrenctl demo --agent $(BIN)/warren-agent

bench: deps build
	$(GO) test -run '^$$' -bench . -benchmem -count 5 ./hbone ./classify

clean:
	rm -rf $(BIN)
