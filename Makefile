# meshdoctor — build, test, benchmark and lint.
#
#   make build      build bin/meshdoctor
#   make image      the agent's OCI image, without a container engine (cmd/meshdoctor-image):
#                   bin/meshdoctor-image.tar (an OCI layout tar, also docker-loadable) and its SBOM
#                   bin/meshdoctor.spdx.json; reproducible (time stamps from SOURCE_DATE_EPOCH,
#                   default the commit's time); named IMAGE_REPO:IMAGE_TAG (default
#                   ghcr.io/meshdoctor/meshdoctor:$(VERSION)); deploy/README.md says how to push it
#   make demo       a throwaway node: healthy and broken pod netns written by Istio's own tool, checked
#   make test       unit tests and the privileged tests on the real test bed (needs root; installs
#                   what it needs with test/setup.sh); the DaemonSet test runs the image make image wrote
#   make bench      benchmarks, each beside its baseline in the same run (the agent's footprint and the
#                   whole-node check beside an older build with MESHDOCTOR_BENCH_BASELINE=path/to/meshdoctor;
#                   MESHDOCTOR_BENCH_WINDOW=2m shortens its 10-minute window)
#   make lint       gofmt, go vet, staticcheck
#   make fuzz       run every fuzz target for FUZZTIME (default 30s), one after another, with
#                   FUZZFLAGS (one worker; interesting inputs minimized for 1s at most), the output in
#                   FUZZLOG; it goes on past a crash and fails at the end, and runs again once a target
#                   that failed with no failing input (Go 1.26's coordinator deadline race)
#   make fuzz-report  make fuzz, then the table of docs/reliability.md from its output
#   make fault-report  the fault suite (test/agent TestFault*: containerd restarts, API server
#                   flapping, a full or read-only state dir, log junk, the CNI conf dir removed),
#                   then the fault table of docs/reliability.md from its output (bin/faults.log)
#   make manifests  render deploy/kustomize from the Helm chart (after changing the chart)

GO        ?= go
BIN       := bin/meshdoctor
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS   := -s -w -X main.version=$(VERSION)
IMAGE_REPO ?= ghcr.io/meshdoctor/meshdoctor
IMAGE_TAG ?= $(VERSION)
IMAGE     := bin/meshdoctor-image.tar
SBOM      := bin/meshdoctor.spdx.json
REVISION  ?= $(shell git rev-parse HEAD 2>/dev/null)
SOURCE_DATE_EPOCH ?= $(shell git log -1 --format=%ct 2>/dev/null || echo 0)
STATICCHECK_VERSION := v0.8.2
FUZZTIME  ?= 30s
FUZZFLAGS ?= -parallel 1 -fuzzminimizetime 1s
FUZZLOG   ?= bin/fuzz.log
# Every test package; the privileged ones skip without root, and fail instead when CI=true.
TEST_FLAGS ?= -count=1 -timeout 30m

.PHONY: all build image test test-unit test-e2e bench lint fuzz fuzz-report fault-report demo setup manifests clean

all: build

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/meshdoctor

image: build
	$(GO) run ./cmd/meshdoctor-image -binary $(BIN) -ref $(IMAGE_REPO):$(IMAGE_TAG) -version $(VERSION) \
	  -revision '$(REVISION)' -created $(SOURCE_DATE_EPOCH) -out $(IMAGE) -sbom $(SBOM)

setup:
	@bash test/setup.sh >/dev/null

test: setup image
	MESHDOCTOR_BIN=$(CURDIR)/$(BIN) MESHDOCTOR_IMAGE=$(CURDIR)/$(IMAGE) $(GO) test $(TEST_FLAGS) ./...

test-unit:
	$(GO) test -count=1 -short ./...

test-e2e: setup image
	MESHDOCTOR_BIN=$(CURDIR)/$(BIN) MESHDOCTOR_IMAGE=$(CURDIR)/$(IMAGE) $(GO) test $(TEST_FLAGS) ./test/...

bench: setup build
	MESHDOCTOR_BIN=$(CURDIR)/$(BIN) $(GO) test -run '^$$' -bench . -benchmem -count=1 ./...

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go'; git ls-files --others --exclude-standard '*.go')); \
	  if [ -n "$$out" ]; then echo "gofmt: not formatted:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) run honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION) ./...

fuzz:
	@mkdir -p $(dir $(FUZZLOG)); : > $(FUZZLOG); one=$(FUZZLOG).one; \
	for pkg in $$($(GO) list ./...); do \
	  for f in $$($(GO) test -list '^Fuzz' $$pkg 2>/dev/null | grep '^Fuzz'); do \
	    echo "fuzz $$pkg $$f"; retried=""; \
	    for try in 1 2; do \
	      $(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) $(FUZZFLAGS) $$pkg > $$one 2>&1 && break; \
	      echo "fuzz failed: $$f" >> $$one; \
	      grep -q 'Failing input written' $$one || ! grep -q '^    context deadline exceeded' $$one || [ $$try = 2 ] && break; \
	      cat $$one; echo "$$f: go's fuzz coordinator missed its deadline, no failing input (go.dev/issue/75804): once more"; \
	      retried=yes; \
	    done; \
	    cat $$one; { echo "fuzz $$pkg $$f"; [ -z "$$retried" ] || echo "fuzz retried: $$f"; cat $$one; } >> $(FUZZLOG); \
	  done; \
	done; rm -f $$one; \
	if grep -q '^fuzz failed: ' $(FUZZLOG); then grep '^fuzz failed: ' $(FUZZLOG); exit 1; fi

fuzz-report: fuzz
	$(GO) run ./test/cmd/fuzz-report -log $(FUZZLOG) -fuzztime $(FUZZTIME) -flags '$(FUZZFLAGS)' -doc docs/reliability.md

fault-report: setup build
	@mkdir -p bin
	MESHDOCTOR_BIN=$(CURDIR)/$(BIN) $(GO) test -count=1 -timeout 20m -run '^TestFault' -v ./test/agent/ > bin/faults.log 2>&1 || \
	  { grep -E '^(--- |FAIL|ok)|FAULT-REPORT' bin/faults.log; echo "fault suite failed: bin/faults.log"; exit 1; }
	$(GO) run ./test/cmd/fault-report -log bin/faults.log -doc docs/reliability.md

manifests:
	@HELM=$$(bash test/setup.sh)/helm-v3.22.0 deploy/render-kustomize.sh

demo: build
	@bash test/demo.sh $(CURDIR)/$(BIN)

clean:
	rm -rf bin
