package sds

import (
	"errors"
	"fmt"
	"strconv"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/types/known/structpb"
)

// Default resource names (Istio's and SPIRE's conventions; the agent
// config may rename them, see [Naming]).
const (
	// DefaultSVIDName is the caller's default certificate and key
	// (Istio's WorkloadKeyCertResourceName, SPIRE's default_svid_name).
	DefaultSVIDName = "default"
	// DefaultBundleName is the validation context with the roots (and
	// CRLs) of the agent's own trust domain (Istio's
	// RootCertReqResourceName, SPIRE's default_bundle_name).
	DefaultBundleName = "ROOTCA"
	// DefaultAllBundlesName is every trust bundle the caller may use (own
	// and federated), served with Envoy's SPIFFE certificate validator
	// (SPIRE's default_all_bundles_name).
	DefaultAllBundlesName = "ALL"
)

// ProfileSeparator separates a resource name from the X.509 profile it
// asks for: "default~sm2" is the caller's SM2 certificate and key,
// "ROOTCA~sm2" the validation context of the SM2 roots,
// "spiffe://example.org/app~sm2" the SM2 SVID of that ID,
// "spiffe://example.org~sm2" the SM2 bundle of that trust domain and
// "ALL~sm2" every SM2 bundle. A name without a suffix is the ECDSA one
// whenever the workload has an ECDSA identity: a stock, BoringSSL-based
// Envoy cannot parse SM2, so "default" and "ROOTCA" are ECDSA whenever a
// workload has both profiles, and only a GM-capable proxy asks for the SM2
// ones. A workload whose identities are all SM2 gets them under the plain
// names too ("default" is its SM2 certificate). "~ecdsa" is the explicit
// ECDSA form, never answered with SM2.
//
// The separator is "~" because it can appear neither in a SPIFFE ID (its
// path segments are [A-Za-z0-9._-]) nor in a trust domain, so no SPIFFE ID
// is ambiguous with a profile suffix ("spiffe://td/app/sm2" is an ordinary
// ECDSA SVID name); Istio uses "~" likewise in "file-cert:<cert>~<key>".
const ProfileSeparator = "~"

// Profile names, as the ca package spells them.
const (
	ProfileECDSA = "ecdsa"
	ProfileSM2   = "sm2"
)

// NameKind is what a resource name designates.
type NameKind int

const (
	// KindDefaultSVID is the caller's default tls_certificate.
	KindDefaultSVID NameKind = iota + 1
	// KindSVID is a tls_certificate named by its SPIFFE ID.
	KindSVID
	// KindDefaultBundle is the validation context of the own trust domain.
	KindDefaultBundle
	// KindBundle is the validation context of the trust domain named by
	// its ID ("spiffe://example.org").
	KindBundle
	// KindAllBundles is every bundle, as one validation context.
	KindAllBundles
)

func (k NameKind) String() string {
	switch k {
	case KindDefaultSVID:
		return "default-svid"
	case KindSVID:
		return "svid"
	case KindDefaultBundle:
		return "default-bundle"
	case KindBundle:
		return "bundle"
	case KindAllBundles:
		return "all-bundles"
	}
	return "kind(" + strconv.Itoa(int(k)) + ")"
}

// Name is a parsed resource name.
type Name struct {
	Kind NameKind
	// Profile is ProfileECDSA or ProfileSM2.
	Profile string
	// Explicit is whether the name carried a profile suffix. A name
	// without one means ECDSA when the caller has an ECDSA identity and
	// SM2 when it has only SM2 ones (the source decides; see
	// [ProfileSeparator]).
	Explicit bool
	// ID is the SPIFFE ID of a KindSVID name.
	ID spiffeid.ID
	// TrustDomain is the trust domain of a KindBundle name.
	TrustDomain spiffeid.TrustDomain
}

// Naming holds the configurable names of the default resources. The zero
// value uses DefaultSVIDName, DefaultBundleName and DefaultAllBundlesName.
type Naming struct {
	DefaultSVID   string
	DefaultBundle string
	AllBundles    string
}

// ErrUnknownName is returned (wrapped) by [Naming.Parse] for a name that
// is none of the conventions.
var ErrUnknownName = errors.New("sds: unknown resource name")

// MaxNameBytes bounds a resource name: a SPIFFE ID may be 2048 bytes, plus
// a profile suffix. Longer names are refused by the server with
// InvalidArgument.
const MaxNameBytes = 2048 + 64

func (n Naming) withDefaults() Naming {
	if n.DefaultSVID == "" {
		n.DefaultSVID = DefaultSVIDName
	}
	if n.DefaultBundle == "" {
		n.DefaultBundle = DefaultBundleName
	}
	if n.AllBundles == "" {
		n.AllBundles = DefaultAllBundlesName
	}
	return n
}

// Validate reports whether the configured names are usable: distinct,
// not SPIFFE IDs, without the profile separator, and bounded.
func (n Naming) Validate() error {
	n = n.withDefaults()
	seen := map[string]string{}
	for _, f := range []struct{ field, v string }{
		{"default SVID name", n.DefaultSVID},
		{"default bundle name", n.DefaultBundle},
		{"all-bundles name", n.AllBundles},
	} {
		switch {
		case len(f.v) > 256:
			return fmt.Errorf("sds: %s is %d bytes, at most 256", f.field, len(f.v))
		case strings.Contains(f.v, ProfileSeparator):
			return fmt.Errorf("sds: %s %q contains the profile separator %q", f.field, f.v, ProfileSeparator)
		case strings.HasPrefix(strings.ToLower(f.v), "spiffe://"):
			return fmt.Errorf("sds: %s %q is a SPIFFE ID", f.field, f.v)
		case f.v == "*":
			return fmt.Errorf("sds: %s may not be the wildcard %q", f.field, f.v)
		}
		if other, dup := seen[f.v]; dup {
			return fmt.Errorf("sds: %s and %s are both %q", other, f.field, f.v)
		}
		seen[f.v] = f.field
	}
	return nil
}

// Parse classifies a requested resource name (see [ProfileSeparator] for
// the SM2 forms). It never panics, whatever the input; a name that is
// none of the conventions wraps ErrUnknownName.
func (n Naming) Parse(name string) (Name, error) {
	n = n.withDefaults()
	if len(name) > MaxNameBytes {
		return Name{}, fmt.Errorf("%w: %d bytes, at most %d", ErrUnknownName, len(name), MaxNameBytes)
	}
	base, profile, explicit := name, ProfileECDSA, false
	if i := strings.LastIndex(name, ProfileSeparator); i >= 0 {
		base = name[:i]
		switch p := name[i+len(ProfileSeparator):]; p {
		case ProfileECDSA, ProfileSM2:
			profile, explicit = p, true
		default:
			return Name{}, fmt.Errorf("%w: %q: profile %q after %q is neither %s nor %s", ErrUnknownName, name, p, ProfileSeparator, ProfileECDSA, ProfileSM2)
		}
	}
	switch base {
	case n.DefaultSVID:
		return Name{Kind: KindDefaultSVID, Profile: profile, Explicit: explicit}, nil
	case n.DefaultBundle:
		return Name{Kind: KindDefaultBundle, Profile: profile, Explicit: explicit}, nil
	case n.AllBundles:
		return Name{Kind: KindAllBundles, Profile: profile, Explicit: explicit}, nil
	}
	if !strings.HasPrefix(base, "spiffe://") {
		return Name{}, fmt.Errorf("%w: %q is neither %q, %q, %q nor a SPIFFE ID", ErrUnknownName, name, n.DefaultSVID, n.DefaultBundle, n.AllBundles)
	}
	id, err := spiffeid.FromString(base)
	if err != nil {
		return Name{}, fmt.Errorf("%w: %q: %v", ErrUnknownName, name, err)
	}
	if id.Path() == "" {
		return Name{Kind: KindBundle, Profile: profile, Explicit: explicit, TrustDomain: id.TrustDomain()}, nil
	}
	return Name{Kind: KindSVID, Profile: profile, Explicit: explicit, ID: id}, nil
}

// String formats the name back into its canonical resource name under the
// given naming (the inverse of [Naming.Parse]).
func (n Naming) String(name Name) string {
	n = n.withDefaults()
	var base string
	switch name.Kind {
	case KindDefaultSVID:
		base = n.DefaultSVID
	case KindDefaultBundle:
		base = n.DefaultBundle
	case KindAllBundles:
		base = n.AllBundles
	case KindSVID:
		base = name.ID.String()
	case KindBundle:
		base = name.TrustDomain.IDString()
	default:
		return ""
	}
	if name.Profile == ProfileSM2 || (name.Explicit && name.Profile != "") {
		return base + ProfileSeparator + name.Profile
	}
	return base
}

// NodeMetadataDisableSPIFFECertValidation is the Envoy node metadata key
// (SPIRE's) with which a proxy asks for the all-bundles resource as a
// plain validation context (trusted_ca of every bundle) instead of the
// SPIFFE certificate validator, e.g. an Envoy older than 1.18. Its value
// is a boolean, or a string "true"/"false".
const NodeMetadataDisableSPIFFECertValidation = "disable_spiffe_cert_validation"

// NodeOptions are the per-proxy options read from Envoy's node metadata.
type NodeOptions struct {
	// DisableSPIFFECertValidation serves the all-bundles resource without
	// Envoy's SPIFFE certificate validator.
	DisableSPIFFECertValidation bool
}

// ParseNodeOptions reads the options of [NodeOptions] from the node's
// metadata. A nil node or metadata gives the zero options; a key with a
// value of the wrong kind is an error (the server refuses the stream with
// InvalidArgument rather than guess).
func ParseNodeOptions(node *corev3.Node) (NodeOptions, error) {
	var o NodeOptions
	f := node.GetMetadata().GetFields()
	if f == nil {
		return o, nil
	}
	v, ok := f[NodeMetadataDisableSPIFFECertValidation]
	if !ok {
		return o, nil
	}
	b, err := metadataBool(v)
	if err != nil {
		return o, fmt.Errorf("sds: node metadata %q: %w", NodeMetadataDisableSPIFFECertValidation, err)
	}
	o.DisableSPIFFECertValidation = b
	return o, nil
}

func metadataBool(v *structpb.Value) (bool, error) {
	switch k := v.GetKind().(type) {
	case *structpb.Value_BoolValue:
		return k.BoolValue, nil
	case *structpb.Value_StringValue:
		b, err := strconv.ParseBool(strings.TrimSpace(k.StringValue))
		if err != nil {
			return false, fmt.Errorf("string %q is not a boolean", truncate(k.StringValue, 64))
		}
		return b, nil
	default:
		return false, fmt.Errorf("want a boolean, got %T", v.GetKind())
	}
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}
