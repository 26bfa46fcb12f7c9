package tunnel

import (
	"encoding/pem"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
)

// FuzzParseKeyFile: any file gives a PUBLIC KEY PEM block or an error,
// never a panic.
func FuzzParseKeyFile(f *testing.F) {
	f.Add([]byte("# kid: k1\n# algorithm: ES256\n-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"))
	f.Add([]byte("# algorithm: RS256\n"))
	f.Add([]byte("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		p, _, err := ParseKeyFile(b)
		if err != nil {
			return
		}
		if blk, _ := pem.Decode(p); blk == nil || blk.Type != "PUBLIC KEY" {
			t.Fatalf("ParseKeyFile accepted %q and returned %q", b, p)
		}
	})
}

// FuzzParseSecrets: any certificate chain, key, roots and CRLs from SDS
// parse or fail with a *SecretError, never a panic; what parses is usable.
func FuzzParseSecrets(f *testing.F) {
	ca := newTestCA(f, "example.org", fixedNow)
	chain, _ := ca.svidKey("/a")
	f.Add(pemOf("CERTIFICATE", chain[0].Raw, chain[1].Raw), []byte("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"),
		pemOf("CERTIFICATE", ca.root.Raw), pemOf("X509 CRL", ca.crl(ca.root, ca.rootK, fixedNow.Add(1e12))))
	f.Add([]byte("garbage"), []byte{}, []byte("-----BEGIN CERTIFICATE-----\n\n-----END CERTIFICATE-----\n"), []byte("-----BEGIN X509 CRL-----\nAA==\n-----END X509 CRL-----\n"))
	inline := func(b []byte) *corev3.DataSource {
		return &corev3.DataSource{Specifier: &corev3.DataSource_InlineBytes{InlineBytes: b}}
	}
	f.Fuzz(func(t *testing.T, chainPEM, keyPEM, roots, crls []byte) {
		id, err := parseIdentity(&tlsv3.Secret{Name: "default", Type: &tlsv3.Secret_TlsCertificate{TlsCertificate: &tlsv3.TlsCertificate{
			CertificateChain: inline(chainPEM), PrivateKey: inline(keyPEM)}}}, "v")
		if err == nil && (id.cert == nil || id.cert.Leaf == nil || id.id.IsZero()) {
			t.Fatalf("an identity without certificate or ID: %+v", id)
		}
		v, err := parseValidation(validationSecret(roots, crls), "v")
		if err == nil {
			if len(v.roots) == 0 {
				t.Fatal("a validation context without roots")
			}
			_, _, _ = v.verifyPeer([][]byte{chainPEM}, ca.td, fixedNow)
		}
	})
}
