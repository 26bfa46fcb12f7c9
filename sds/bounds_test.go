package sds

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// rawCodec sends bytes as they are: garbage frames.
type rawCodec struct{}

func (rawCodec) Marshal(v any) ([]byte, error) { return v.([]byte), nil }
func (rawCodec) Unmarshal(data []byte, v any) error {
	*(v.(*[]byte)) = data
	return nil
}
func (rawCodec) Name() string { return "proto" }

// expectStreamError sends req on a fresh SotW stream and expects the
// stream to end with code, its message containing want.
func (h *harness) expectStreamError(req *discoveryv3.DiscoveryRequest, code codes.Code, want string) {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(h.t.Context(), 30*time.Second)
	defer cancel()
	s, err := h.client.StreamSecrets(ctx)
	if err != nil {
		h.t.Fatal(err)
	}
	if err := s.Send(req); err != nil {
		h.t.Fatalf("send: %v", err)
	}
	_, err = s.Recv()
	if st, _ := status.FromError(err); st.Code() != code || !strings.Contains(st.Message(), want) {
		h.t.Fatalf("stream ended with %v, want %v containing %q", err, code, want)
	}
}

// Abusive requests get a clear gRPC error and leave every other stream
// working.
func TestBounds(t *testing.T) {
	h := newHarness(t, nil)
	p := newPKI(t)
	setupAB(t, h, p)
	bystander := h.envoy("b", "default")
	rb := bystander.recv()
	bystander.ack(rb)
	node := &corev3.Node{Id: "a"}

	many := make([]string, 10000)
	for i := range many {
		many[i] = fmt.Sprintf("spiffe://example.org/w/%d", i)
	}
	t.Run("10000 names", func(t *testing.T) {
		h.expectStreamError(&discoveryv3.DiscoveryRequest{Node: node, ResourceNames: many}, codes.InvalidArgument, "10000 names, at most 1000")
	})
	t.Run("unknown type_url", func(t *testing.T) {
		h.expectStreamError(&discoveryv3.DiscoveryRequest{Node: node, ResourceNames: []string{"default"}, TypeUrl: "type.googleapis.com/envoy.config.cluster.v3.Cluster"},
			codes.InvalidArgument, "serves only "+SecretTypeURL)
	})
	t.Run("long name", func(t *testing.T) {
		h.expectStreamError(&discoveryv3.DiscoveryRequest{Node: node, ResourceNames: []string{strings.Repeat("x", 5000)}}, codes.InvalidArgument, "at most")
	})
	t.Run("empty name", func(t *testing.T) {
		h.expectStreamError(&discoveryv3.DiscoveryRequest{Node: node, ResourceNames: []string{"default", ""}}, codes.InvalidArgument, "empty name")
	})
	t.Run("10 MiB request", func(t *testing.T) {
		h.expectStreamError(&discoveryv3.DiscoveryRequest{Node: node, ResourceNames: []string{strings.Repeat("x", 10<<20)}}, codes.ResourceExhausted, "larger than max")
	})
	t.Run("garbage frame", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
		defer cancel()
		s, err := h.conn.NewStream(ctx, &grpc.StreamDesc{ServerStreams: true, ClientStreams: true},
			"/envoy.service.secret.v3.SecretDiscoveryService/StreamSecrets", grpc.ForceCodec(rawCodec{}))
		if err != nil {
			t.Fatal(err)
		}
		if err := s.SendMsg([]byte{0xff, 0xff, 0xff, 0xff, 0x0f, 0x01}); err != nil {
			t.Fatal(err)
		}
		var out []byte
		err = s.RecvMsg(&out)
		if st, _ := status.FromError(err); st.Code() != codes.Internal || !strings.Contains(st.Message(), "unmarshal") {
			t.Fatalf("garbage frame: %v, want Internal (unmarshal)", err)
		}
	})
	t.Run("delta 10000 names", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
		defer cancel()
		s, err := h.client.DeltaSecrets(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Send(&discoveryv3.DeltaDiscoveryRequest{Node: node, ResourceNamesSubscribe: many}); err != nil {
			t.Fatal(err)
		}
		_, err = s.Recv()
		if st, _ := status.FromError(err); st.Code() != codes.InvalidArgument {
			t.Fatalf("delta with 10000 names: %v", err)
		}
	})
	t.Run("delta subscribing past the bound in steps", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
		defer cancel()
		s, err := h.client.DeltaSecrets(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for i := 0; i < 2; i++ {
			if err := s.Send(&discoveryv3.DeltaDiscoveryRequest{Node: node, ResourceNamesSubscribe: many[i*600 : (i+1)*600]}); err != nil {
				t.Fatal(err)
			}
		}
		for {
			_, err = s.Recv()
			if err != nil {
				break
			}
		}
		if st, _ := status.FromError(err); st.Code() != codes.InvalidArgument || !strings.Contains(st.Message(), "1200 names") {
			t.Fatalf("delta subscribed to 1200 names: %v", err)
		}
	})
	t.Run("fetch 10000 names", func(t *testing.T) {
		_, err := h.client.FetchSecrets(t.Context(), &discoveryv3.DiscoveryRequest{Node: node, ResourceNames: many})
		if st, _ := status.FromError(err); st.Code() != codes.InvalidArgument {
			t.Fatalf("fetch with 10000 names: %v", err)
		}
	})

	// The bystander's stream still works: it gets its rotation.
	h.store.grant("b", "default", p.svid(t, "default", idB, "b2"))
	if r := bystander.recv(); r.GetVersionInfo() == rb.GetVersionInfo() {
		t.Fatal("bystander did not get its rotation")
	}
	if open := h.srv.Stats().OpenStreams; open < 1 {
		t.Fatalf("open streams %d", open)
	}
}

// A Source error ends the stream with a clear status; a status error is
// passed as is.
func TestSourceErrors(t *testing.T) {
	h := newHarness(t, func(c *Config) {
		c.Secrets = func(_ context.Context, node *corev3.Node) (Source, error) {
			if node.GetId() == "denied" {
				return nil, status.Error(codes.PermissionDenied, "caller has no identity")
			}
			return nil, fmt.Errorf("attestation: no such process")
		}
	})
	h.expectStreamError(&discoveryv3.DiscoveryRequest{Node: &corev3.Node{Id: "denied"}}, codes.PermissionDenied, "no identity")
	h.expectStreamError(&discoveryv3.DiscoveryRequest{Node: &corev3.Node{Id: "x"}}, codes.Unavailable, "attestation: no such process")
}
