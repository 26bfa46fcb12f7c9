package deploy

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"testing"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	httpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	"github.com/meshca/meshca/sds"
	"go.yaml.in/yaml/v3"
	"google.golang.org/protobuf/encoding/protojson"
)

// loadBootstrap decodes an Envoy bootstrap YAML file strictly (an unknown
// field is an error, as in Envoy) and validates it with Envoy's own
// constraints (protoc-gen-validate).
func loadBootstrap(t *testing.T, path string) *bootstrapv3.Bootstrap {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var doc any
	if err := yaml.Unmarshal(data, &doc); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	js, err := json.Marshal(doc)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	b := &bootstrapv3.Bootstrap{}
	if err := protojson.Unmarshal(js, b); err != nil {
		t.Fatalf("%s does not decode as an Envoy v3 bootstrap: %v", path, err)
	}
	if err := b.ValidateAll(); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return b
}

// sdsUse is one reference of a bootstrap to an SDS secret.
type sdsUse struct {
	name       string
	validation bool // a validation context (else a tls_certificate)
	config     *corev3.ConfigSource
}

// tlsContexts returns the CommonTlsContext of every TLS transport socket,
// of listeners and clusters.
func tlsContexts(t *testing.T, b *bootstrapv3.Bootstrap) []*tlsv3.CommonTlsContext {
	t.Helper()
	var out []*tlsv3.CommonTlsContext
	for _, l := range b.GetStaticResources().GetListeners() {
		for _, fc := range l.GetFilterChains() {
			if ts := fc.GetTransportSocket(); ts != nil {
				d := &tlsv3.DownstreamTlsContext{}
				if err := ts.GetTypedConfig().UnmarshalTo(d); err != nil {
					t.Fatalf("listener %s: %v", l.GetName(), err)
				}
				if !d.GetRequireClientCertificate().GetValue() {
					t.Errorf("listener %s: mTLS requires client certificates", l.GetName())
				}
				out = append(out, d.GetCommonTlsContext())
			}
		}
	}
	for _, c := range b.GetStaticResources().GetClusters() {
		if ts := c.GetTransportSocket(); ts != nil {
			u := &tlsv3.UpstreamTlsContext{}
			if err := ts.GetTypedConfig().UnmarshalTo(u); err != nil {
				t.Fatalf("cluster %s: %v", c.GetName(), err)
			}
			out = append(out, u.GetCommonTlsContext())
		}
	}
	return out
}

func sdsUses(t *testing.T, b *bootstrapv3.Bootstrap) []sdsUse {
	var uses []sdsUse
	for _, ctx := range tlsContexts(t, b) {
		for _, c := range ctx.GetTlsCertificateSdsSecretConfigs() {
			uses = append(uses, sdsUse{name: c.GetName(), config: c.GetSdsConfig()})
		}
		if ctx.GetCombinedValidationContext() == nil {
			t.Errorf("a TLS context without a validation context: the peer is not verified")
			continue
		}
		v := ctx.GetCombinedValidationContext().GetValidationContextSdsSecretConfig()
		uses = append(uses, sdsUse{name: v.GetName(), validation: true, config: v.GetSdsConfig()})
		if len(ctx.GetCombinedValidationContext().GetDefaultValidationContext().GetMatchTypedSubjectAltNames()) == 0 {
			t.Errorf("validation context %s: no SPIFFE ID matcher, any workload of the trust domain is accepted", v.GetName())
		}
	}
	return uses
}

// checkAgentCluster checks the SDS cluster: the agent's Unix socket,
// HTTP/2 (gRPC).
func checkAgentCluster(t *testing.T, b *bootstrapv3.Bootstrap, name string) {
	t.Helper()
	var c *clusterv3.Cluster
	for _, x := range b.GetStaticResources().GetClusters() {
		if x.GetName() == name {
			c = x
		}
	}
	if c == nil {
		t.Fatalf("no cluster %s", name)
	}
	pipe := c.GetLoadAssignment().GetEndpoints()[0].GetLbEndpoints()[0].GetEndpoint().GetAddress().GetPipe()
	if pipe.GetPath() != "/run/meshca/agent.sock" {
		t.Errorf("cluster %s: pipe %q, want the agent socket /run/meshca/agent.sock (as in the README)", name, pipe.GetPath())
	}
	opts, ok := c.GetTypedExtensionProtocolOptions()["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
	if !ok {
		t.Fatalf("cluster %s: no HTTP protocol options: gRPC needs HTTP/2", name)
	}
	h := &httpv3.HttpProtocolOptions{}
	if err := opts.UnmarshalTo(h); err != nil {
		t.Fatal(err)
	}
	if h.GetExplicitHttpConfig().GetHttp2ProtocolOptions() == nil {
		t.Errorf("cluster %s: not HTTP/2", name)
	}
}

// The bootstraps in deploy/envoy decode with go-control-plane's types and
// pass Envoy's validation; every secret they ask for is a name the agent
// serves, of the right kind, over gRPC to the agent's socket.
func TestEnvoyBootstraps(t *testing.T) {
	for _, tc := range []struct {
		file        string
		certs, vals []string // the secret names it must use
	}{
		{"envoy.yaml", []string{"default"}, []string{"ROOTCA"}},
		{"envoy-spiffe.yaml", []string{"spiffe://example.org/ns/prod/sa/gateway"}, []string{"ALL"}},
	} {
		t.Run(tc.file, func(t *testing.T) {
			b := loadBootstrap(t, filepath.Join("envoy", tc.file))
			checkAgentCluster(t, b, "meshca_agent")
			var certs, vals []string
			for _, u := range sdsUses(t, b) {
				n, err := sds.Naming{}.Parse(u.name)
				if err != nil {
					t.Errorf("secret %q: the agent does not serve this name: %v", u.name, err)
					continue
				}
				isCert := n.Kind == sds.KindDefaultSVID || n.Kind == sds.KindSVID
				if isCert == u.validation {
					t.Errorf("secret %q (%s) used as a validation context: %v", u.name, n.Kind, u.validation)
				}
				api := u.config.GetApiConfigSource()
				if api.GetApiType() != corev3.ApiConfigSource_GRPC && api.GetApiType() != corev3.ApiConfigSource_DELTA_GRPC ||
					api.GetTransportApiVersion() != corev3.ApiVersion_V3 || u.config.GetResourceApiVersion() != corev3.ApiVersion_V3 ||
					api.GetGrpcServices()[0].GetEnvoyGrpc().GetClusterName() != "meshca_agent" {
					t.Errorf("secret %q: SDS config %v, want v3 gRPC to cluster meshca_agent", u.name, u.config)
				}
				if u.validation {
					vals = append(vals, u.name)
				} else {
					certs = append(certs, u.name)
				}
			}
			for _, w := range tc.certs {
				if !slices.Contains(certs, w) {
					t.Errorf("no tls_certificate %q (have %v)", w, certs)
				}
			}
			for _, w := range tc.vals {
				if !slices.Contains(vals, w) {
					t.Errorf("no validation context %q (have %v)", w, vals)
				}
			}
			if _, err := sds.ParseNodeOptions(b.GetNode()); err != nil {
				t.Errorf("node metadata: %v", err)
			}
		})
	}
}
