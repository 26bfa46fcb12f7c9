package sdsclient

import (
	"context"
	"testing"

	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

// FuzzWatchResponse: a watcher given any DiscoveryResponse calls Apply
// only with the subscribed secret, and otherwise refuses it (a NACK),
// never panics.
func FuzzWatchResponse(f *testing.F) {
	sec, _ := anypb.New(&tlsv3.Secret{Name: "default", Type: &tlsv3.Secret_GenericSecret{GenericSecret: &tlsv3.GenericSecret{}}})
	for _, r := range []*discoveryv3.DiscoveryResponse{
		{VersionInfo: "v1", Nonce: "n", TypeUrl: SecretTypeURL, Resources: []*anypb.Any{sec}},
		{TypeUrl: "type.googleapis.com/other"},
		{Resources: []*anypb.Any{{TypeUrl: SecretTypeURL, Value: []byte{0xff}}}},
	} {
		b, _ := proto.Marshal(r)
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var resp discoveryv3.DiscoveryResponse
		if proto.Unmarshal(b, &resp) != nil {
			return
		}
		w := &Watcher{cfg: WatchConfig{Name: "default", Apply: func(_ context.Context, _ string, s *tlsv3.Secret) error {
			if s.GetName() != "default" {
				t.Fatalf("Apply with %q", s.GetName())
			}
			return nil
		}}}
		_ = w.apply(context.Background(), &resp)
	})
}
