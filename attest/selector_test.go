package attest_test

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/meshca/meshca/attest"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

func TestParseSelector(t *testing.T) {
	tests := []struct {
		name, in string
		want     attest.Selector
		wantErr  bool
	}{
		{name: "ok/unix-uid", in: "unix:uid:1000", want: attest.Selector{Type: "unix", Value: "uid:1000"}},
		{name: "ok/label-with-colons", in: "k8s:pod-label:app:web", want: attest.Selector{Type: "k8s", Value: "pod-label:app:web"}},
		{name: "ok/underscore-type", in: "k8s_psat:cluster:prod", want: attest.Selector{Type: "k8s_psat", Value: "cluster:prod"}},
		{name: "ok/value-without-key", in: "join_token:00ff", want: attest.Selector{Type: "join_token", Value: "00ff"}},
		{name: "ok/path-with-spaces", in: "unix:path:/opt/my app/bin", want: attest.Selector{Type: "unix", Value: "path:/opt/my app/bin"}},
		{name: "ok/unicode", in: "k8s:pod-name:café", want: attest.Selector{Type: "k8s", Value: "pod-name:café"}},
		{name: "fail/empty", in: "", wantErr: true},
		{name: "fail/no-colon", in: "unix", wantErr: true},
		{name: "fail/empty-type", in: ":uid:0", wantErr: true},
		{name: "fail/empty-value", in: "unix:", wantErr: true},
		{name: "fail/uppercase-type", in: "Unix:uid:0", wantErr: true},
		{name: "fail/dash-type", in: "k8s-psat:cluster:a", wantErr: true},
		{name: "fail/space-type", in: "un ix:uid:0", wantErr: true},
		{name: "fail/newline-value", in: "unix:path:/a\nb", wantErr: true},
		{name: "fail/nul-value", in: "unix:path:/a\x00b", wantErr: true},
		{name: "fail/c1-control", in: "unix:path:/a\u0085b", wantErr: true},
		{name: "fail/invalid-utf8", in: "unix:path:/a\xffb", wantErr: true},
		{name: "fail/long-type", in: strings.Repeat("a", attest.MaxSelectorTypeLen+1) + ":v", wantErr: true},
		{name: "fail/long-value", in: "unix:" + strings.Repeat("v", attest.MaxSelectorValueLen+1), wantErr: true},
		{name: "ok/longest-value", in: "unix:" + strings.Repeat("v", attest.MaxSelectorValueLen),
			want: attest.Selector{Type: "unix", Value: strings.Repeat("v", attest.MaxSelectorValueLen)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := attest.ParseSelector(tt.in)
			if tt.wantErr {
				if !errors.Is(err, attest.ErrInvalidSelector) {
					t.Fatalf("ParseSelector(%q) = %v, %v; want ErrInvalidSelector", tt.in, got, err)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("ParseSelector(%q) = %v, %v; want %v", tt.in, got, err, tt.want)
			}
			if got.String() != tt.in {
				t.Errorf("ParseSelector(%q).String() = %q", tt.in, got.String())
			}
		})
	}
}

func TestSelectorString(t *testing.T) {
	s := attest.Selector{Type: "unix", Value: "uid:1000"}
	if got := s.String(); got != "unix:uid:1000" {
		t.Errorf("String() = %q, want unix:uid:1000", got)
	}
	if got := fmt.Sprint(s); got != "unix:uid:1000" {
		t.Errorf("fmt.Sprint = %q, want unix:uid:1000", got)
	}
}

func TestErrorKinds(t *testing.T) {
	cause := errors.New("x509: certificate signed by unknown authority")
	err := fmt.Errorf("attest node: %w", attest.NewError(attest.KindNotAuthorized, "x509pop", "certificate is not issued by a provisioning CA", cause))
	if !errors.Is(err, attest.ErrNotAuthorized) {
		t.Errorf("errors.Is(%v, ErrNotAuthorized) = false", err)
	}
	for _, other := range []error{attest.ErrInvalidEvidence, attest.ErrUnavailable, attest.ErrProcessChanged, attest.ErrInvalidSelector} {
		if errors.Is(err, other) {
			t.Errorf("errors.Is(%v, %v) = true", err, other)
		}
	}
	if !errors.Is(err, cause) {
		t.Errorf("the cause is not wrapped")
	}
	var ae *attest.Error
	if !errors.As(err, &ae) || ae.Attestor != "x509pop" || ae.Kind != attest.KindNotAuthorized {
		t.Fatalf("errors.As = %+v", ae)
	}
	want := "attest node: attest: x509pop: not authorized: certificate is not issued by a provisioning CA: x509: certificate signed by unknown authority"
	if err.Error() != want {
		t.Errorf("Error() = %q\nwant      %q", err.Error(), want)
	}
	// A plain error wrapping a sentinel, as a server callback may return.
	if wrapped := fmt.Errorf("%w: token used", attest.ErrNotAuthorized); !errors.Is(wrapped, attest.ErrNotAuthorized) {
		t.Errorf("fmt wrapping of the sentinel does not match")
	}
	if attest.ErrUnavailable.Error() != "attest: unavailable" {
		t.Errorf("sentinel Error() = %q", attest.ErrUnavailable.Error())
	}
}

func TestAgentID(t *testing.T) {
	td := spiffeid.RequireTrustDomainFromString("example.org")
	tests := []struct {
		name     string
		attestor string
		unique   []string
		want     string
		wantErr  bool
	}{
		{name: "ok/one", attestor: "join_token", unique: []string{"00ff"}, want: "spiffe://example.org/meshca/agent/join_token/00ff"},
		{name: "ok/two", attestor: "k8s_psat", unique: []string{"prod", "0d4c-1"}, want: "spiffe://example.org/meshca/agent/k8s_psat/prod/0d4c-1"},
		{name: "fail/none", attestor: "x509pop", wantErr: true},
		{name: "fail/slash", attestor: "k8s_psat", unique: []string{"a/b"}, wantErr: true},
		{name: "fail/dotdot", attestor: "k8s_psat", unique: []string{".."}, wantErr: true},
		{name: "fail/empty", attestor: "k8s_psat", unique: []string{""}, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id, err := attest.AgentID(td, tt.attestor, tt.unique...)
			if tt.wantErr {
				if err == nil {
					t.Fatalf("AgentID(%q, %q) = %v, want error", tt.attestor, tt.unique, id)
				}
				return
			}
			if err != nil || id.String() != tt.want {
				t.Fatalf("AgentID(%q, %q) = %v, %v; want %s", tt.attestor, tt.unique, id, err, tt.want)
			}
		})
	}
	if _, err := attest.AgentID(spiffeid.TrustDomain{}, "x509pop", "a"); err == nil {
		t.Error("AgentID with a zero trust domain succeeded")
	}
}

// FuzzParseSelector checks that ParseSelector never panics, and that what
// it accepts is valid, round-trips through String and fits the limits.
func FuzzParseSelector(f *testing.F) {
	for _, s := range []string{"unix:uid:1000", "k8s:pod-label:app:web", "", ":", "a:", ":b", "A:b", "unix:path:/a\nb", "x:\xff"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		s, err := attest.ParseSelector(in)
		if err != nil {
			if !errors.Is(err, attest.ErrInvalidSelector) {
				t.Fatalf("ParseSelector(%q) error %v is not ErrInvalidSelector", in, err)
			}
			return
		}
		if s.String() != in {
			t.Fatalf("ParseSelector(%q).String() = %q", in, s.String())
		}
		if err := s.Validate(); err != nil {
			t.Fatalf("ParseSelector(%q) accepted an invalid selector: %v", in, err)
		}
		if s.Type == "" || s.Value == "" || strings.Contains(s.Type, ":") {
			t.Fatalf("ParseSelector(%q) = %#v", in, s)
		}
	})
}
