package ca

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/emmansun/gmsm/smx509"
	_ "github.com/meshca/meshca/ca/stepcas" // the ECDSA hierarchy, as servers make it
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// newLocal opens a fresh LocalCA in a temporary data directory.
func newLocal(t testing.TB, td string) *LocalCA {
	t.Helper()
	dir := t.TempDir()
	kek, err := CreateKEKFile(filepath.Join(dir, "kek"))
	if err != nil {
		t.Fatal(err)
	}
	l, err := OpenLocal(LocalConfig{Dir: dir, KEK: kek, TrustDomain: spiffeid.RequireTrustDomainFromString(td)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

// makeCSR returns a DER CSR signed by key, with the given URI SANs and DNS names.
// SM2 keys are signed with the default signer ID through smx509.
func makeCSR(t testing.TB, key crypto.Signer, uris []string, dns ...string) []byte {
	t.Helper()
	var us []*url.URL
	for _, u := range uris {
		pu, err := url.Parse(u)
		if err != nil {
			t.Fatal(err)
		}
		us = append(us, pu)
	}
	var der []byte
	var err error
	if isSM2(key.Public()) {
		der, err = smx509.CreateCertificateRequest(rand.Reader, &smx509.CertificateRequest{URIs: us, DNSNames: dns}, key)
	} else {
		der, err = x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: us, DNSNames: dns}, key)
	}
	if err != nil {
		t.Fatal(err)
	}
	return der
}

// issue makes a key and a CSR of the profile and has l's issuer sign it.
func issue(t testing.TB, l *LocalCA, profile, id string, dns ...string) (*X509SVID, crypto.Signer) {
	t.Helper()
	p, err := ProfileByName(profile)
	if err != nil {
		t.Fatal(err)
	}
	key, err := p.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	a, err := l.Issuer(profile)
	if err != nil {
		t.Fatal(err)
	}
	svid, err := a.SignX509SVID(context.Background(), X509SVIDParams{CSR: makeCSR(t, key, nil), SPIFFEID: id, DNSNames: dns})
	if err != nil {
		t.Fatalf("SignX509SVID(%s, %s): %v", profile, id, err)
	}
	return svid, key
}

// requireTool returns the path of a binary the test needs. Outside CI a
// missing tool skips the test; in CI (CI=true) it fails it, because `make
// test` installs every tool the tests need.
func requireTool(t testing.TB, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err == nil {
		return p
	}
	if os.Getenv("CI") != "" {
		t.Fatalf("%s is required in CI and is not installed (make test installs it)", name)
	}
	t.Skipf("%s not installed; run `make test`, which installs it", name)
	return ""
}

func td(s string) spiffeid.TrustDomain { return spiffeid.RequireTrustDomainFromString(s) }

func mustKey(t testing.TB, p Profile) crypto.Signer {
	t.Helper()
	k, err := p.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	return k
}
