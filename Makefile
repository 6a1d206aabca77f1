# hearth's build, set-up and test entry points. Every target that needs a
# Debian package or a Go tool installs it first, so each works on a fresh
# Debian 12 machine with Go and root.

GO            ?= go
BIN           := bin
ASSETS        ?= $(or $(HEARTH_ASSETS),/var/lib/hearth/assets)
STATICCHECK   := $(shell $(GO) env GOPATH)/bin/staticcheck
STATICCHECK_VERSION := v0.8.2
FUZZTIME      ?= 60s

.PHONY: all build deps install assets setup demo lint test proto clean

all: build

build:
	$(GO) build -o $(BIN)/hearth ./cmd/hearth
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags='-s -w' -o $(BIN)/hearth-agent ./cmd/hearth-agent

deps:
	scripts/install-deps

install: build
	install -m 0755 $(BIN)/hearth /usr/local/bin/hearth

assets: build
	HEARTH_ASSETS=$(ASSETS) scripts/build-assets $(BIN)/hearth-agent

# setup installs the packages, the hearth binary and the boot assets.
setup: deps install assets

# demo is the README's first command: set everything up, then boot a
# sandbox and print its kernel version from inside the guest.
demo: setup
	hearth run -- cat /proc/version

$(STATICCHECK):
	$(GO) install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION)

lint: $(STATICCHECK)
	$(GO) vet ./...
	$(STATICCHECK) ./...

# test is the README's test command and what CI runs: set-up, lint, a
# short run of every fuzz target, and the whole suite under the race
# detector, including tests that boot real guests from the assets.
test: deps assets lint fuzz-short
	HEARTH_ASSETS=$(ASSETS) $(GO) test -race -count=1 -timeout 25m ./...

# proto regenerates api/sandboxv1 from proto/sandbox/v1/sandbox.proto; the
# generated code is committed.
proto:
	scripts/gen-proto

# FUZZ_TARGETS lists package:target pairs; go test fuzzes one target per
# run, so fuzz runs each in turn for $(FUZZTIME).
FUZZ_TARGETS := ./agentproto:FuzzReadFrame ./agentproto:FuzzDecodeStart \
	./agentproto:FuzzFileRequests ./agent:FuzzExecSession ./agent:FuzzFileSession

fuzz:
	@set -e; for target in $(FUZZ_TARGETS); do \
		pkg=$${target%%:*}; name=$${target#*:}; \
		echo "fuzz $$name in $$pkg for $(FUZZTIME)"; \
		$(GO) test -run='^$$' -fuzz="^$$name\$$" -fuzztime=$(FUZZTIME) $$pkg; \
	done

# fuzz-short runs each fuzz target for 5 s, as a quick check.
fuzz-short:
	$(MAKE) fuzz FUZZTIME=5s

clean:
	rm -rf $(BIN)

# bench measures hearth against this machine's physical floors and
# prints one table, also written to bench-results.json (docs/benchmarks.md
# explains each measure). It needs root, takes about ten minutes on two
# cores, and is never part of test.
.PHONY: bench
bench: assets
	$(GO) build -o $(BIN)/hearth-bench ./cmd/hearth-bench
	CGO_ENABLED=0 $(GO) build -o $(BIN)/fake-firecracker ./internal/fcdouble/cmd/fake-firecracker
	$(BIN)/hearth-bench -bin $(BIN) -assets $(ASSETS) -out bench-results.json
