package naming

import (
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

var td = spiffeid.RequireTrustDomainFromString("example.org")

func TestAgentID(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name     string
		attestor string
		unique   []string
		want     string
	}{
		{"ok/one", "join_token", []string{"00ff"}, "spiffe://example.org/meshca/agent/join_token/00ff"},
		{"ok/two", "k8s_psat", []string{"prod", "0d4c-1"}, "spiffe://example.org/meshca/agent/k8s_psat/prod/0d4c-1"},
		{"fail/none", "x509pop", nil, ""},
		{"fail/slash", "k8s_psat", []string{"a/b"}, ""},
		{"fail/attestor-slash", "a/b", []string{"c"}, ""},
		{"fail/dotdot", "k8s_psat", []string{".."}, ""},
		{"fail/empty", "k8s_psat", []string{""}, ""},
	} {
		id, err := AgentID(td, tc.attestor, tc.unique...)
		if tc.want == "" {
			if err == nil {
				t.Errorf("%s: AgentID(%q, %q) = %v, want an error", tc.name, tc.attestor, tc.unique, id)
			}
			continue
		}
		if err != nil || id.String() != tc.want {
			t.Errorf("%s: AgentID(%q, %q) = %v, %v; want %s", tc.name, tc.attestor, tc.unique, id, err, tc.want)
		}
		if !IsAgentID(td, id) || IsServerID(td, id) || !IsReserved(id.Path()) {
			t.Errorf("%s: %s is not an agent ID, or is a server ID, or is not reserved", tc.name, id)
		}
	}
	if _, err := AgentID(spiffeid.TrustDomain{}, "x509pop", "a"); err == nil {
		t.Error("AgentID with a zero trust domain succeeded")
	}
}

func TestServerID(t *testing.T) {
	t.Parallel()
	id, err := ServerID(td, "s1")
	if err != nil || id.String() != "spiffe://example.org/meshca/server/s1" {
		t.Fatalf(`ServerID("s1") = %v, %v`, id, err)
	}
	if n, ok := ServerNodeID(td, id); !ok || n != "s1" || !IsServerID(td, id) || IsAgentID(td, id) {
		t.Errorf("ServerNodeID(%s) = %q, %v", id, n, ok)
	}
	if _, err := ServerID(td, "a/../b"); err == nil {
		t.Error(`ServerID("a/../b") succeeded`)
	}
	other := spiffeid.RequireTrustDomainFromString("other.org")
	for _, tc := range []struct {
		name string
		id   spiffeid.ID
	}{
		{"fail/other-trust-domain", spiffeid.RequireFromPath(other, "/meshca/server/s1")},
		{"fail/agent", spiffeid.RequireFromPath(td, "/meshca/agent/join_token/00")},
		{"fail/prefix-only", spiffeid.RequireFromPath(td, "/meshca/server")},
		{"fail/workload", spiffeid.RequireFromPath(td, "/meshca-server/s1")},
	} {
		if n, ok := ServerNodeID(td, tc.id); ok || IsServerID(td, tc.id) {
			t.Errorf("%s: ServerNodeID(%s) = %q, true; want not a server", tc.name, tc.id, n)
		}
	}
}

func TestIsAgentID(t *testing.T) {
	t.Parallel()
	other := spiffeid.RequireTrustDomainFromString("other.org")
	for _, tc := range []struct {
		id   spiffeid.ID
		want bool
	}{
		{spiffeid.RequireFromPath(td, "/meshca/agent/x509pop/ab"), true},
		{spiffeid.RequireFromPath(other, "/meshca/agent/x509pop/ab"), false},
		{spiffeid.RequireFromPath(td, "/meshca/agent"), false},
		{spiffeid.RequireFromPath(td, "/meshca/server/s1"), false},
		{spiffeid.RequireFromPath(td, "/ns/meshca/agent/x"), false},
	} {
		if got := IsAgentID(td, tc.id); got != tc.want {
			t.Errorf("IsAgentID(%s) = %v, want %v", tc.id, got, tc.want)
		}
	}
	if got := AgentPathPrefix("join_token"); got != "/meshca/agent/join_token/" {
		t.Errorf("AgentPathPrefix(join_token) = %q", got)
	}
}

func TestIsReserved(t *testing.T) {
	t.Parallel()
	for path, want := range map[string]bool{
		"/meshca": true, "/meshca/": true, "/meshca/server/s1": true, "/meshca/anything": true,
		"/meshcax": false, "/meshca-dev/x": false, "/dev/meshca": false, "": false, "/": false,
	} {
		if got := IsReserved(path); got != want {
			t.Errorf("IsReserved(%q) = %v, want %v", path, got, want)
		}
	}
}
