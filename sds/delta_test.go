package sds

import (
	"context"
	"slices"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretv3 "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	"google.golang.org/genproto/googleapis/rpc/status"
)

// deltaEnvoy behaves like Envoy with api_type DELTA_GRPC.
type deltaEnvoy struct {
	t      *testing.T
	stream secretv3.SecretDiscoveryService_DeltaSecretsClient
	has    map[string]string // name → version held
	nonce  string
}

func (h *harness) deltaEnvoy(node string, subscribe []string, initial map[string]string) *deltaEnvoy {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(h.t.Context(), 30*time.Second)
	h.t.Cleanup(cancel)
	s, err := h.client.DeltaSecrets(ctx)
	if err != nil {
		h.t.Fatal(err)
	}
	d := &deltaEnvoy{t: h.t, stream: s, has: map[string]string{}}
	for n, v := range initial {
		d.has[n] = v
	}
	d.send(&discoveryv3.DeltaDiscoveryRequest{
		Node: &corev3.Node{Id: node}, TypeUrl: SecretTypeURL,
		ResourceNamesSubscribe: subscribe, InitialResourceVersions: initial,
	})
	return d
}

func (d *deltaEnvoy) send(req *discoveryv3.DeltaDiscoveryRequest) {
	d.t.Helper()
	if err := d.stream.Send(req); err != nil {
		d.t.Fatalf("send: %v", err)
	}
}

// recv receives a response, checks it and applies it like Envoy.
func (d *deltaEnvoy) recv() *discoveryv3.DeltaDiscoveryResponse {
	d.t.Helper()
	r, err := d.stream.Recv()
	if err != nil {
		d.t.Fatalf("recv: %v", err)
	}
	if r.GetNonce() == "" || r.GetSystemVersionInfo() == "" || r.GetTypeUrl() != SecretTypeURL {
		d.t.Fatalf("response without nonce, system_version_info or type: %v", r)
	}
	for _, res := range r.GetResources() {
		sec := secretsOf(d.t, []*anypbAny{res.GetResource()})[0]
		if sec.GetName() != res.GetName() || res.GetVersion() == "" {
			d.t.Fatalf("resource %q (version %q) carries secret %q", res.GetName(), res.GetVersion(), sec.GetName())
		}
		d.has[res.GetName()] = res.GetVersion()
	}
	for _, n := range r.GetRemovedResources() {
		delete(d.has, n)
	}
	d.nonce = r.GetNonce()
	return r
}

func (d *deltaEnvoy) ack() {
	d.t.Helper()
	d.send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: SecretTypeURL, ResponseNonce: d.nonce})
}

func resourceNames(r *discoveryv3.DeltaDiscoveryResponse) []string {
	var out []string
	for _, res := range r.GetResources() {
		out = append(out, res.GetName())
	}
	slices.Sort(out)
	return out
}

// Delta sends the subscribed resources, then only what changed; a
// removal is in removed_resources; unsubscribing stops the updates.
func TestDeltaChangedOnlyRemovalUnsubscribe(t *testing.T) {
	h := newHarness(t, nil)
	p := newPKI(t)
	setupAB(t, h, p)
	d := h.deltaEnvoy("a", []string{"default", "ROOTCA"}, nil)
	r := d.recv()
	if got := resourceNames(r); !slices.Equal(got, []string{"ROOTCA", "default"}) {
		t.Fatalf("initial delta response has %q", got)
	}
	d.ack()
	h.waitRequest("a", RequestACK)

	h.store.grant("a", "default", p.svid(t, "default", idA, "a2"))
	r = d.recv()
	if got := resourceNames(r); !slices.Equal(got, []string{"default"}) {
		t.Fatalf("after a rotation delta sent %q, want only default", got)
	}
	mustEqual(t, "rotated version", r.GetResources()[0].GetVersion(), "a2")
	d.ack()
	h.waitRequest("a", RequestACK)

	d.send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: SecretTypeURL, ResourceNamesUnsubscribe: []string{"ROOTCA"}})
	h.waitRequest("a", RequestUpdate)
	h.idle()
	for _, c := range []string{"a", "b"} {
		h.store.set(c, "ROOTCA", fakeEntry{status: Granted, res: p.bundle(t, "bundle2", 2), topic: "bundle"})
	}
	h.idle()

	h.store.set("a", "default", fakeEntry{status: Refused, reason: "entry deleted"})
	r = d.recv()
	if len(r.GetResources()) != 0 || !slices.Equal(r.GetRemovedResources(), []string{"default"}) {
		t.Fatalf("after the entry's deletion: resources %q, removed %q; want default removed (and nothing of the unsubscribed ROOTCA)", resourceNames(r), r.GetRemovedResources())
	}
	d.ack()
	h.waitRequest("a", RequestACK)
	if au := h.auditsFor("a"); len(au) != 3 || au[2].Decision != DecisionRefuse || au[2].Method != MethodDelta {
		t.Fatalf("audits %+v: want grant, grant, refuse", au)
	}
}

// A reconnecting client's initial_resource_versions are honoured:
// nothing is sent for the unchanged ones.
func TestDeltaInitialResourceVersions(t *testing.T) {
	h := newHarness(t, nil)
	p := newPKI(t)
	setupAB(t, h, p)

	// default is current, ROOTCA stale: only ROOTCA is sent.
	d := h.deltaEnvoy("a", []string{"default", "ROOTCA"}, map[string]string{"default": "a1", "ROOTCA": "bundle0"})
	r := d.recv()
	if got := resourceNames(r); !slices.Equal(got, []string{"ROOTCA"}) {
		t.Fatalf("sent %q, want only the stale ROOTCA", got)
	}
	d.ack()

	// Everything current: nothing at all until something changes.
	d2 := h.deltaEnvoy("b", []string{"default", "ROOTCA"}, map[string]string{"default": "b1", "ROOTCA": "bundle1"})
	h.waitRequest("b", RequestInitial)
	h.idle()
	h.store.grant("b", "default", p.svid(t, "default", idB, "b2"))
	r = d2.recv()
	if got := resourceNames(r); !slices.Equal(got, []string{"default"}) {
		t.Fatalf("first response %q, want only the rotated default", got)
	}
}

// A name the caller may not have is answered in removed_resources (the
// incremental "does not exist"), audited, and sent once granted.
func TestDeltaRefusedIsRemovedThenGranted(t *testing.T) {
	h := newHarness(t, nil)
	p := newPKI(t)
	setupAB(t, h, p)
	d := h.deltaEnvoy("a", []string{idB}, nil)
	r := d.recv()
	if len(r.GetResources()) != 0 || !slices.Equal(r.GetRemovedResources(), []string{idB}) {
		t.Fatalf("refused name: resources %q, removed %q", resourceNames(r), r.GetRemovedResources())
	}
	d.ack()
	h.waitRequest("a", RequestACK)
	if au := h.auditsFor("a"); len(au) != 1 || au[0].Decision != DecisionRefuse || au[0].Name != idB {
		t.Fatalf("audits %+v", au)
	}
	h.store.grant("a", idB, p.svid(t, idB, idB, "x1"))
	if got := resourceNames(d.recv()); !slices.Equal(got, []string{idB}) {
		t.Fatalf("granted later: %q", got)
	}
}

// A NACK is counted and not answered with the same content; subscribing
// again to a held name resends it (the client may have forgotten it).
func TestDeltaNACKAndResubscribe(t *testing.T) {
	h := newHarness(t, nil)
	p := newPKI(t)
	setupAB(t, h, p)
	d := h.deltaEnvoy("a", []string{"default"}, nil)
	d.recv()
	d.send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: SecretTypeURL, ResponseNonce: d.nonce, ErrorDetail: &status.Status{Code: 3, Message: "bad key"}})
	ev := h.waitRequest("a", RequestNACK)
	mustEqual(t, "NACK error", ev.Error, "bad key")
	h.srv.Notify("a/default")
	h.idle()
	d.send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: SecretTypeURL, ResourceNamesSubscribe: []string{"default"}})
	r := d.recv()
	if got := resourceNames(r); !slices.Equal(got, []string{"default"}) {
		t.Fatalf("resubscription got %q", got)
	}
	mustEqual(t, "responses", h.srv.Stats().Responses, uint64(2))
	mustEqual(t, "NACKs", h.srv.Stats().NACKs, uint64(1))
}

// A stale nonce acknowledges nothing, but its subscription change is
// applied.
func TestDeltaStaleNonceStillSubscribes(t *testing.T) {
	h := newHarness(t, nil)
	p := newPKI(t)
	setupAB(t, h, p)
	d := h.deltaEnvoy("a", []string{"default"}, nil)
	d.recv()
	d.send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: SecretTypeURL, ResponseNonce: "old", ResourceNamesSubscribe: []string{"ROOTCA"}})
	if got := resourceNames(d.recv()); !slices.Equal(got, []string{"ROOTCA"}) {
		t.Fatalf("subscription in a stale request got %q", got)
	}
	mustEqual(t, "stale", h.srv.Stats().StaleNonces, uint64(1))
}

// A wildcard delta stream ("*") gets every name and is told of names that
// disappear.
func TestDeltaWildcard(t *testing.T) {
	h := newHarness(t, nil)
	p := newPKI(t)
	setupAB(t, h, p)
	d := h.deltaEnvoy("a", []string{"*"}, nil)
	if got := resourceNames(d.recv()); !slices.Equal(got, []string{"ROOTCA", "default"}) {
		t.Fatalf("wildcard got %q", got)
	}
	d.ack()
	h.waitRequest("a", RequestACK)
	h.store.set("a", "ROOTCA", fakeEntry{status: Refused, topic: "bundle"})
	r := d.recv()
	if !slices.Equal(r.GetRemovedResources(), []string{"ROOTCA"}) {
		t.Fatalf("removed %q", r.GetRemovedResources())
	}
}
