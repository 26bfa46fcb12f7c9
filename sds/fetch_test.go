package sds

import (
	"context"
	"slices"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/protobuf/proto"
)

func (h *harness) fetch(node string, names ...string) *discoveryv3.DiscoveryResponse {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(h.t.Context(), 30*time.Second)
	defer cancel()
	r, err := h.client.FetchSecrets(ctx, &discoveryv3.DiscoveryRequest{
		Node: &corev3.Node{Id: node}, ResourceNames: names, TypeUrl: SecretTypeURL,
	})
	if err != nil {
		h.t.Fatalf("FetchSecrets: %v", err)
	}
	checkSotWResponse(h.t, r, names)
	return r
}

// FetchSecrets returns what a stream would: the same secrets, byte for
// byte, in the same order, with the same version_info.
func TestFetchEqualsStream(t *testing.T) {
	h := newHarness(t, nil)
	p := newPKI(t)
	setupAB(t, h, p)
	for _, names := range [][]string{{"default", "ROOTCA"}, {"ROOTCA"}, nil, {"default", idB}} {
		s := h.envoy("a", names...).recv()
		f := h.fetch("a", names...)
		if len(f.GetResources()) != len(s.GetResources()) {
			t.Fatalf("%q: fetch has %d resources, stream %d", names, len(f.GetResources()), len(s.GetResources()))
		}
		for i := range f.GetResources() {
			if !proto.Equal(f.GetResources()[i], s.GetResources()[i]) {
				t.Fatalf("%q: resource %d differs between fetch and stream", names, i)
			}
		}
		mustEqual(t, "version_info", f.GetVersionInfo(), s.GetVersionInfo())
	}
	// The refused idB was audited on the stream and on the fetch.
	var refusals []string
	for _, a := range h.auditsFor("a") {
		if a.Decision == DecisionRefuse {
			refusals = append(refusals, a.Method+" "+a.Name)
		}
	}
	if !slices.Equal(refusals, []string{MethodStream + " " + idB, MethodFetch + " " + idB}) {
		t.Fatalf("refusals audited: %q", refusals)
	}
}

// A fetch of a pending name waits for it.
func TestFetchWaitsForPending(t *testing.T) {
	h := newHarness(t, nil)
	p := newPKI(t)
	h.store.set("a", "default", fakeEntry{status: Pending})
	h.store.resolved = make(chan string, 16)
	got := make(chan *discoveryv3.DiscoveryResponse, 1)
	go func() { got <- h.fetch("a", "default") }()
	mustEqual(t, "resolved", <-h.store.resolved, "a/default")
	mustEqual(t, "resolved", <-h.store.resolved, "a/default") // again, after registering its topics
	go func() {
		for range h.store.resolved { // drain the resolutions after the grant
		}
	}()
	h.store.grant("a", "default", p.svid(t, "default", idA, "a1"))
	r := <-got
	close(h.store.resolved)
	mustEqual(t, "fetched after the grant", leafID(t, secretNamed(t, r, "default")), idA)
}

// A fetch of a name still pending after FetchWait answers without it.
func TestFetchPendingTimesOut(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.FetchWait = time.Millisecond })
	h.store.set("a", "default", fakeEntry{status: Pending})
	if r := h.fetch("a", "default"); len(r.GetResources()) != 0 {
		t.Fatalf("pending name fetched: %d resources", len(r.GetResources()))
	}
}
