package entryfile

import (
	"errors"
	"strings"
	"testing"
)

const spireShaped = `{
  "entries": [
    {
      "selectors": [{"type": "k8s", "value": "ns:demo"}, {"type": "k8s", "value": "sa:web"}],
      "spiffe_id": "spiffe://example.org/ns/demo/sa/web",
      "parent_id": "spiffe://example.org/meshca/agent/k8s_psat/demo-cluster/n1",
      "x509_svid_ttl": 3600,
      "dns_names": ["web.demo.svc"],
      "admin": false,
      "downstream": false,
      "federates_with": []
    },
    {
      "selectors": [{"type": "unix", "value": "uid:1111"}],
      "spiffe_id": "spiffe://example.org/Blog",
      "parent_id": "spiffe://example.org/meshca/agent/join_token/abc",
      "ttl": 200,
      "profile": "sm2"
    }
  ]
}`

func TestParse(t *testing.T) {
	es, err := Parse(strings.NewReader(spireShaped))
	if err != nil {
		t.Fatal(err)
	}
	if len(es) != 2 {
		t.Fatalf("%d entries", len(es))
	}
	a, b := es[0], es[1]
	if a.SpiffeId != "spiffe://example.org/ns/demo/sa/web" || a.TtlSeconds != 3600 || len(a.Selectors) != 2 || a.Selectors[1].Type != "k8s" || a.Selectors[1].Value != "sa:web" ||
		a.DnsNames[0] != "web.demo.svc" || a.Profile != "" {
		t.Errorf("entry 0: %+v", a)
	}
	if b.TtlSeconds != 200 || b.Profile != "sm2" || b.ParentId != "spiffe://example.org/meshca/agent/join_token/abc" {
		t.Errorf("entry 1: %+v", b)
	}

	for name, tc := range map[string]struct {
		in    string
		entry int
		want  string
	}{
		"unknown key":  {`{"entries": [{"spiffe_id": "x", "selector": []}]}`, -1, `unknown key "selector"`},
		"no entries":   {`{"entries": []}`, -1, "no entries"},
		"no list":      {`{}`, -1, "no entries"},
		"not json":     {`entries:`, -1, "not a JSON object"},
		"trailing":     {`{"entries": [{"spiffe_id": "x"}]} {}`, -1, "after the JSON object"},
		"admin":        {`{"entries": [{"spiffe_id": "x"}, {"spiffe_id": "y", "admin": true}]}`, 1, "admin"},
		"federates":    {`{"entries": [{"spiffe_id": "x", "federates_with": ["spiffe://other"]}]}`, 0, "federate"},
		"entry id":     {`{"entries": [{"spiffe_id": "x", "entry_id": "e1"}]}`, 0, "assigns entry IDs"},
		"jwt ttl":      {`{"entries": [{"spiffe_id": "x", "jwt_svid_ttl": 30}]}`, 0, "jwt_svid_ttl"},
		"ttls differ":  {`{"entries": [{"spiffe_id": "x", "ttl": 10, "x509_svid_ttl": 20}]}`, 0, "differ"},
		"negative ttl": {`{"entries": [{"spiffe_id": "x", "x509_svid_ttl": -1}]}`, 0, "negative"},
	} {
		_, err := Parse(strings.NewReader(tc.in))
		var fe *Error
		if !errors.As(err, &fe) || fe.Entry != tc.entry || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an Error for entry %d saying %q", name, err, tc.entry, tc.want)
		}
	}
}

func FuzzParse(f *testing.F) {
	f.Add([]byte(spireShaped))
	f.Fuzz(func(t *testing.T, b []byte) {
		es, err := Parse(strings.NewReader(string(b)))
		if err != nil {
			var fe *Error
			if !errors.As(err, &fe) {
				t.Fatalf("error %T is not an *Error: %v", err, err)
			}
			return
		}
		if len(es) == 0 {
			t.Fatal("Parse accepted a file without entries")
		}
		for _, e := range es {
			if e.TtlSeconds < 0 || e.Id != "" || e.Revision != 0 {
				t.Fatalf("Parse produced %+v", e)
			}
		}
	})
}
