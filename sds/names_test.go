package sds

import (
	"errors"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"google.golang.org/protobuf/types/known/structpb"
)

func TestParseName(t *testing.T) {
	var n Naming
	for _, tc := range []struct {
		name    string
		kind    NameKind
		profile string
		id, td  string
	}{
		{"ok/default", KindDefaultSVID, ProfileECDSA, "", ""},
		{"ok/default~sm2", KindDefaultSVID, ProfileSM2, "", ""},
		{"ok/default~ecdsa", KindDefaultSVID, ProfileECDSA, "", ""},
		{"ok/ROOTCA", KindDefaultBundle, ProfileECDSA, "", ""},
		{"ok/ROOTCA~sm2", KindDefaultBundle, ProfileSM2, "", ""},
		{"ok/ALL", KindAllBundles, ProfileECDSA, "", ""},
		{"ok/ALL~sm2", KindAllBundles, ProfileSM2, "", ""},
		{"ok/spiffe://example.org/ns/a/sa/b", KindSVID, ProfileECDSA, "spiffe://example.org/ns/a/sa/b", ""},
		{"ok/spiffe://example.org/app~sm2", KindSVID, ProfileSM2, "spiffe://example.org/app", ""},
		// A SPIFFE ID ending in /sm2 is an ordinary (ECDSA) SVID name.
		{"ok/spiffe://example.org/app/sm2", KindSVID, ProfileECDSA, "spiffe://example.org/app/sm2", ""},
		{"ok/spiffe://example.org", KindBundle, ProfileECDSA, "", "example.org"},
		{"ok/spiffe://other.test~sm2", KindBundle, ProfileSM2, "", "other.test"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := tc.name[len("ok/"):]
			got, err := n.Parse(in)
			if err != nil {
				t.Fatalf("Parse(%q) = %v", in, err)
			}
			if got.Kind != tc.kind || got.Profile != tc.profile || got.ID.String() != tc.id || got.TrustDomain.Name() != tc.td {
				t.Fatalf("Parse(%q) = %+v, want kind %v profile %s id %q td %q", in, got, tc.kind, tc.profile, tc.id, tc.td)
			}
			if back := n.String(got); back != in && back+ProfileSeparator+ProfileECDSA != in {
				t.Fatalf("String(Parse(%q)) = %q", in, back)
			}
		})
	}
	for _, in := range []string{"", "Default", "default~rsa", "default~", "spiffe://Example.org/x", "spiffe://example.org/a//b",
		"spiffe://example.org/", "file-cert:a~b", "https://example.org/x", "ROOTCA~sm2~sm2", "*"} {
		t.Run("fail/"+in, func(t *testing.T) {
			if got, err := n.Parse(in); !errors.Is(err, ErrUnknownName) {
				t.Fatalf("Parse(%q) = %+v, %v, want ErrUnknownName", in, got, err)
			}
		})
	}
}

func TestNamingConfigured(t *testing.T) {
	n := Naming{DefaultSVID: "svid", DefaultBundle: "bundle", AllBundles: "everything"}
	if err := n.Validate(); err != nil {
		t.Fatal(err)
	}
	if got, err := n.Parse("bundle~sm2"); err != nil || got.Kind != KindDefaultBundle || got.Profile != ProfileSM2 {
		t.Fatalf("Parse(bundle~sm2) = %+v, %v", got, err)
	}
	if _, err := n.Parse("default"); !errors.Is(err, ErrUnknownName) {
		t.Fatalf("renamed default still parses: %v", err)
	}
	for _, bad := range []Naming{
		{DefaultSVID: "a~b"},
		{DefaultBundle: "spiffe://example.org"},
		{DefaultSVID: "x", DefaultBundle: "x"},
		{AllBundles: "*"},
	} {
		if err := bad.Validate(); err == nil {
			t.Fatalf("Validate(%+v) accepted", bad)
		}
	}
}

func TestParseNodeOptions(t *testing.T) {
	meta := func(v *structpb.Value) *corev3.Node {
		return &corev3.Node{Metadata: &structpb.Struct{Fields: map[string]*structpb.Value{NodeMetadataDisableSPIFFECertValidation: v}}}
	}
	for _, tc := range []struct {
		name string
		node *corev3.Node
		want bool
		err  bool
	}{
		{"ok/nil node", nil, false, false},
		{"ok/no metadata", &corev3.Node{Id: "x"}, false, false},
		{"ok/bool true", meta(structpb.NewBoolValue(true)), true, false},
		{"ok/string true", meta(structpb.NewStringValue("true")), true, false},
		{"ok/string false", meta(structpb.NewStringValue("false")), false, false},
		{"fail/number", meta(structpb.NewNumberValue(1)), false, true},
		{"fail/string", meta(structpb.NewStringValue("yes please")), false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseNodeOptions(tc.node)
			if (err != nil) != tc.err || got.DisableSPIFFECertValidation != tc.want {
				t.Fatalf("ParseNodeOptions = %+v, %v; want %v, error %v", got, err, tc.want, tc.err)
			}
		})
	}
}
