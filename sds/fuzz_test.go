package sds

import (
	"context"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"
)

// FuzzParseName: any name parses or fails with ErrUnknownName, never
// panics, and a parsed name formats back to a name that parses the same.
func FuzzParseName(f *testing.F) {
	for _, s := range []string{"default", "default~sm2", "ROOTCA~ecdsa", "ALL", "spiffe://example.org/ns/a/sa/b~sm2", "spiffe://example.org", "~", "spiffe://~sm2"} {
		f.Add(s)
	}
	var n Naming
	f.Fuzz(func(t *testing.T, s string) {
		got, err := n.Parse(s)
		if err != nil {
			return
		}
		again, err := n.Parse(n.String(got))
		if err != nil || again != got {
			t.Fatalf("Parse(%q) = %+v, but Parse(String) = %+v, %v", s, got, again, err)
		}
	})
}

// FuzzNodeOptions: Envoy node metadata of any shape gives options or an
// error, never a panic.
func FuzzNodeOptions(f *testing.F) {
	for _, v := range []*structpb.Value{structpb.NewBoolValue(true), structpb.NewStringValue("false"), structpb.NewNumberValue(3), structpb.NewNullValue()} {
		b, err := proto.Marshal(&corev3.Node{Id: "n", Metadata: &structpb.Struct{Fields: map[string]*structpb.Value{NodeMetadataDisableSPIFFECertValidation: v}}})
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		node := &corev3.Node{}
		if proto.Unmarshal(b, node) != nil {
			return
		}
		_, _ = ParseNodeOptions(node)
	})
}

// FuzzDiscoveryRequest: whatever a client sends, the request checks and
// the subscription parsing of the server neither panic nor accept more
// names than the bound.
func FuzzDiscoveryRequest(f *testing.F) {
	for _, r := range []*discoveryv3.DiscoveryRequest{
		{ResourceNames: []string{"default"}, TypeUrl: SecretTypeURL},
		{ResourceNames: []string{"*", "ROOTCA", "ROOTCA"}, ResponseNonce: "abc", VersionInfo: "v"},
		{TypeUrl: "type.googleapis.com/x", Node: &corev3.Node{Id: "n"}},
	} {
		b, err := proto.Marshal(r)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	s, err := New(Config{Secrets: func(_ context.Context, _ *corev3.Node) (Source, error) { return nil, nil }, MaxNames: 8})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		req := &discoveryv3.DiscoveryRequest{}
		if proto.Unmarshal(b, req) != nil {
			return
		}
		if checkTypeURL(req.GetTypeUrl()) != nil {
			return
		}
		if s.checkNames("resource_names", req.GetResourceNames()) != nil {
			return
		}
		names, _ := dedupe(req.GetResourceNames())
		if len(names) > 8 {
			t.Fatalf("%d names passed a bound of 8", len(names))
		}
		for _, n := range names {
			if n == "" || n == "*" || len(n) > MaxNameBytes {
				t.Fatalf("name %q passed the checks", n)
			}
			var nm Naming
			_, _ = nm.Parse(n)
		}
		_, _ = ParseNodeOptions(req.GetNode())
	})
}
