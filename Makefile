# meshca — build, test, benchmark.
#
#   make test    install what the tests need if it is missing (openssl, postgresql), then go test ./...
#   make bench   the issuance benchmarks documented in README.md
#   make lint    gofmt and go vet
#   make fuzz    run the fuzz targets for FUZZTIME each (default 20s)
#   make generate        regenerate proto/ Go code from the .proto files
#   make generate-check  fail if the committed generated code is stale

GO       ?= go
FUZZTIME ?= 20s

.PHONY: all build test deps bench lint fuzz fuzz-check generate generate-check proto-tools

all: lint test

build:
	$(GO) build -o meshca ./cmd/meshca

# TOOLS are the system tools the tests run for real, as binary:Debian
# package pairs.
TOOLS ?= openssl:openssl promtool:prometheus systemd-analyze:systemd script:util-linux

# deps installs the missing TOOLS. As root it uses apt-get; otherwise it
# says what to install.
deps:
	@missing=""; for tp in $(TOOLS); do \
		command -v "$${tp%%:*}" >/dev/null 2>&1 || missing="$$missing $${tp#*:}"; \
	done; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
			echo "installing$$missing (the tests run them)"; \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
		else \
			echo "make test needs:$$missing (sudo apt-get install$$missing)" >&2; exit 1; \
		fi; \
	fi
	@# PostgreSQL for the history tests: not in TOOLS, since Debian puts
	@# initdb in /usr/lib/postgresql/<version>/bin, off PATH (internal/pgtest
	@# finds it there and runs it unprivileged).
	@if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && ! command -v initdb >/dev/null 2>&1; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
			echo "installing postgresql (the history tests run a throw-away PostgreSQL)"; \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; \
		else \
			echo "make test needs PostgreSQL's server binaries: sudo apt-get install postgresql" >&2; exit 1; \
		fi; \
	fi

# A package may take longer than go test's default 10 minutes on a loaded
# 2-core machine (internal/e2e runs multi-server clusters for ~6 minutes idle).
test: deps
	$(GO) test -timeout 25m ./...

bench:
	$(GO) test ./ca -run '^$$' -bench 'Issue|RawCrypto' -benchtime 3s -count 5

lint: fuzz-check
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	cd store/logbench && $(GO) vet ./...

# FUZZ_TARGETS is every Fuzz target of the module, as package:Target;
# make fuzz-check (part of make lint and make fuzz) fails when it and the
# _test.go files disagree, so a new target cannot be left out of CI.
FUZZ_TARGETS = \
	./agent:FuzzRequestedProfiles \
	./agent:FuzzTokenKid \
	./agent:FuzzValidateJWTSVID \
	./attest/internal/jsonpayload:FuzzDecode \
	./attest/jointoken:FuzzDecodePayload \
	./attest/k8s:FuzzDecodePodList \
	./attest/k8s:FuzzParseCgroupLine \
	./attest/k8s:FuzzValidateSelectorValue \
	./attest/k8spsat:FuzzDecodePayload \
	./attest/unix:FuzzParseStatus \
	./attest/unix:FuzzValidateSelectorValue \
	./attest/x509pop:FuzzDecodePayload \
	./attest:FuzzParseSelector \
	./audit:FuzzDecodeLine \
	./bench:FuzzProcFiles \
	./ca:FuzzIssue \
	./ca:FuzzOpenSealedKey \
	./ca:FuzzParseCertificatesPEM \
	./ca:FuzzParseKEK \
	./ca:FuzzPlainCSR \
	./cmd/meshca:FuzzLoadConfig \
	./cmd/meshca:FuzzParseTimeFlag \
	./cmd/meshca:FuzzTunnelListenerFlag \
	./internal/entryfile:FuzzParse \
	./internal/procfs:FuzzParseStartTime \
	./policy:FuzzBundleHeaders \
	./policy:FuzzBundleToken \
	./policy:FuzzCompile \
	./policy:FuzzEnvoyInput \
	./raftfsm:FuzzApply \
	./raftfsm:FuzzRestore \
	./sds/sdsclient:FuzzWatchResponse \
	./sds:FuzzDiscoveryRequest \
	./sds:FuzzNodeOptions \
	./sds:FuzzParseName \
	./server/joinsecret:FuzzParse \
	./server:FuzzCheckJoinToken \
	./server:FuzzParseSerial \
	./store/postgres:FuzzPageTokens \
	./store/postgres:FuzzParseConfig \
	./tunnel:FuzzParseKeyFile \
	./tunnel:FuzzParseSecrets

# fuzz runs every target of FUZZ_TARGETS for FUZZTIME, from its committed
# seed corpus in testdata/fuzz. A run that Go 1.26's fuzzing coordinator
# ends with a bare "context deadline exceeded" at the -fuzztime boundary,
# with no failing input (go.dev/issue/75804, fixed in Go 1.27), is not a
# failure of the target: it is run once more; a failing input, a panic or a
# test error fails.
fuzz: fuzz-check
	@set -e; for pt in $(FUZZ_TARGETS); do \
		pkg=$${pt%%:*}; t=$${pt##*:}; \
		echo "fuzz $$pkg $$t"; \
		for attempt in 1 2; do \
			log=$$(mktemp); \
			if $(GO) test $$pkg -run '^$$' -fuzz "^$$t\$$" -fuzztime $(FUZZTIME) >$$log 2>&1; then cat $$log; rm -f $$log; break; fi; \
			cat $$log; \
			if grep -q 'Failing input written\|panic:\|_test.go:[0-9]*:' $$log || ! grep -q 'context deadline exceeded' $$log; then rm -f $$log; exit 1; fi; \
			rm -f $$log; \
			echo "fuzz $$pkg $$t: Go 1.26's fuzztime deadline race (go.dev/issue/75804), no failing input: attempt $$attempt of 2"; \
		done; \
	done

# fuzz-check compares FUZZ_TARGETS with the Fuzz functions of the _test.go files.
fuzz-check:
	@found=$$(for f in $$(grep -rl --include='*_test.go' '^func Fuzz' . | sort); do \
		for t in $$(grep -o '^func Fuzz[A-Za-z0-9_]*' $$f | cut -d' ' -f2); do echo "./$$(dirname $${f#./}):$$t"; done; \
	done | sort -u); \
	listed=$$(printf '%s\n' $(FUZZ_TARGETS) | sort -u); \
	if [ "$$found" != "$$listed" ]; then \
		echo "FUZZ_TARGETS in the Makefile and the Fuzz functions of the _test.go files differ:"; \
		echo "  in the code, not listed: $$(echo "$$found" | grep -vxF "$$listed" | tr '\n' ' ')"; \
		echo "  listed, not in the code: $$(echo "$$listed" | grep -vxF "$$found" | tr '\n' ' ')"; \
		exit 1; \
	fi

GOBIN ?= $(shell $(GO) env GOPATH)/bin

# proto-tools installs protoc (Debian's protobuf-compiler, as root) and the
# pinned Go plugins when they are missing.
proto-tools:
	@if ! command -v protoc >/dev/null 2>&1; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq protobuf-compiler >/dev/null; \
		else \
			echo "make generate needs protoc: sudo apt-get install protobuf-compiler" >&2; exit 1; \
		fi; \
	fi
	@[ -x $(GOBIN)/protoc-gen-go ] || $(GO) install google.golang.org/protobuf/cmd/protoc-gen-go@v1.36.12
	@[ -x $(GOBIN)/protoc-gen-go-grpc ] || $(GO) install google.golang.org/grpc/cmd/protoc-gen-go-grpc@v1.6.2

generate: proto-tools
	PATH="$(GOBIN):$$PATH" $(GO) generate ./proto/

generate-check: generate
	@git diff --exit-code -- proto/ || { echo "proto/ generated code is stale: run make generate and commit" >&2; exit 1; }
