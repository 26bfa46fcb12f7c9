# meshca — build, test, benchmark.
#
#   make test    install what the tests need if it is missing (openssl), then go test ./...
#   make bench   the issuance benchmarks documented in README.md
#   make lint    gofmt and go vet
#   make fuzz    run the fuzz targets for FUZZTIME each (default 20s)

GO       ?= go
FUZZTIME ?= 20s

.PHONY: all build test deps bench lint fuzz

all: lint test

build:
	$(GO) build -o meshca ./cmd/meshca

# deps installs the system tools the tests run for real. As root it uses
# apt-get; otherwise it says what to install.
deps:
	@if ! command -v openssl >/dev/null 2>&1; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
			echo "installing openssl (tests verify every chain with it)"; \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssl >/dev/null; \
		else \
			echo "make test needs the openssl binary: sudo apt-get install openssl" >&2; exit 1; \
		fi; \
	fi

test: deps
	$(GO) test ./...

bench:
	$(GO) test ./ca -run '^$$' -bench 'Issue|RawCrypto' -benchtime 3s -count 5

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

fuzz:
	$(GO) test ./ca -run '^$$' -fuzz '^FuzzIssue$$' -fuzztime $(FUZZTIME)
