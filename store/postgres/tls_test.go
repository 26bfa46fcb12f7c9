package postgres

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/meshca/meshca/internal/pgtest"
)

// testPKI makes a CA and a server certificate for 127.0.0.1 signed by it,
// as PEM: the CA certificate, the server's certificate and key.
func testPKI(t *testing.T, cn string) (caPEM, certPEM, keyPEM []byte) {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	now := time.Now()
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: cn}, NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, _ := x509.ParseCertificate(caDER)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "postgres"}, NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, KeyUsage: x509.KeyUsageDigitalSignature}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder})
}

// sslmode=verify-full with a CA file connects to a PostgreSQL whose
// certificate that CA signed, and refuses one another CA signed.
func TestVerifyFullTLS(t *testing.T) {
	pg := pgtest.Start(t)
	caPEM, certPEM, keyPEM := testPKI(t, "history CA")
	if err := pg.EnableTLS(certPEM, keyPEM); err != nil {
		t.Fatal(err)
	}
	dsn := strings.Replace(pg.Database(t), "sslmode=disable", "sslmode=verify-full", 1)
	dir := t.TempDir()
	caFile := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(caFile, caPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	s, err := Open(ctxT(t), Config{DSN: dsn, CAFile: caFile})
	if err != nil {
		t.Fatalf("verify-full with the right CA: %v", err)
	}
	var ssl bool
	if err := s.pool.QueryRow(ctxT(t), "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").Scan(&ssl); err != nil || !ssl {
		t.Fatalf("connection not over TLS: %v %v", ssl, err)
	}
	s.Close()
	otherCA, _, _ := testPKI(t, "another CA")
	other := filepath.Join(dir, "other.pem")
	if err := os.WriteFile(other, otherCA, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(ctxT(t), Config{DSN: dsn, CAFile: other}); err == nil || IsAuth(err) {
		t.Fatalf("verify-full with another CA: %v, want a TLS failure", err)
	}
}
