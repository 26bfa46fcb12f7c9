package k8s

import (
	"errors"
	"strings"
	"testing"

	"github.com/meshca/meshca/attest"
)

func TestValidateSelectorValue(t *testing.T) {
	for _, c := range []struct {
		name, value string
		inMsg       string // "" = valid
	}{
		{"ok/ns", "ns:prod", ""},
		{"ok/sa", "sa:api-server", ""},
		{"ok/sa-dotted", "sa:system.api", ""},
		{"ok/pod-name", "pod-name:web-7d4b9c8f6-x2x9z", ""},
		{"ok/pod-uid-uuid", "pod-uid:11111111-2222-3333-4444-555555555555", ""},
		{"ok/pod-uid-static-hash", "pod-uid:" + strings.Repeat("ab", 16), ""},
		{"ok/label", "pod-label:app:web", ""},
		{"ok/label-prefixed", "pod-label:app.kubernetes.io/name:Web_1.2", ""},
		{"ok/label-empty-value", "pod-label:canary:", ""},
		{"ok/container", "container-name:app", ""},
		{"ok/node", "node-name:ip-10-0-0-1.ec2.internal", ""},
		{"fail/ns-upper", "ns:Prod", "lowercase"},
		{"fail/ns-long", "ns:" + strings.Repeat("a", 64), "at most 63"},
		{"fail/ns-dash-end", "ns:prod-", "starts and ends"},
		{"fail/ns-dot", "ns:a.b", "not '.'"},
		{"fail/ns-leading-space", "ns: prod", "leading or trailing spaces"},
		{"fail/ns-empty", "ns:", "empty"},
		{"fail/sa-underscore", "sa:my_sa", "not '_'"},
		{"fail/sa-empty-part", "sa:a..b", "empty"},
		{"fail/pod-uid-upper", "pod-uid:ABC", "hexadecimal"},
		{"fail/label-no-value-part", "pod-label:app", "<label key>:<label value>"},
		{"fail/label-empty-key", "pod-label::web", "label key is empty"},
		{"fail/label-bad-key", "pod-label:-app:web", "starts and ends"},
		{"fail/label-bad-value", "pod-label:app:web server", "label value"},
		{"fail/label-bad-prefix", "pod-label:Example.com/app:web", "prefix"},
		{"fail/container-upper", "container-name:App", "lowercase"},
		{"fail/unknown-key", "namespace:prod", `unknown key "namespace"`},
		{"fail/no-key", "prod", "k8s:<key>:<value>"},
	} {
		t.Run(c.name, func(t *testing.T) {
			err := ValidateSelectorValue(c.value)
			if c.inMsg == "" {
				if err != nil {
					t.Fatalf("ValidateSelectorValue(%q) = %v, want nil", c.value, err)
				}
				return
			}
			if !errors.Is(err, attest.ErrInvalidSelector) || !strings.Contains(err.Error(), c.inMsg) {
				t.Fatalf("ValidateSelectorValue(%q) = %v, want ErrInvalidSelector saying %q", c.value, err, c.inMsg)
			}
		})
	}
}

// What the attestor produces for a pod passes the validator.
func TestSelectorsOfPodAreValid(t *testing.T) {
	p, err := decodePodList([]byte(podListJSON(webPod("11111111-2222-3333-4444-555555555555", strings.Repeat("a", 64)))))
	if err != nil {
		t.Fatal(err)
	}
	for _, pd := range p.byUID {
		for _, s := range pd.selectors("app") {
			if err := ValidateSelectorValue(s.Value); err != nil {
				t.Errorf("the attestor produced %s, which the validator refuses: %v", s, err)
			}
		}
	}
}

// FuzzValidateSelectorValue checks that validation never panics, fails
// only with ErrInvalidSelector, and accepts only known keys and values
// without surrounding spaces.
func FuzzValidateSelectorValue(f *testing.F) {
	for _, s := range []string{"ns:prod", "sa:a.b", "pod-label:app:web", "pod-label:a/b:", "pod-uid:abc-1", "ns:Prod", "node-name:a..b", "x:y"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, value string) {
		err := ValidateSelectorValue(value)
		if err != nil {
			if !errors.Is(err, attest.ErrInvalidSelector) {
				t.Fatalf("ValidateSelectorValue(%q) = %v, not ErrInvalidSelector", value, err)
			}
			return
		}
		key, v, _ := strings.Cut(value, ":")
		if strings.TrimSpace(v) != v || strings.ContainsAny(v, " \t") {
			t.Fatalf("ValidateSelectorValue(%q) accepted spaces", value)
		}
		known := false
		for _, k := range SelectorKeys {
			known = known || k == key
		}
		if !known {
			t.Fatalf("ValidateSelectorValue(%q) accepted unknown key %q", value, key)
		}
	})
}
