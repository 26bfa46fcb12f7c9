package ca

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// These tests run the real openssl binary (OpenSSL 3) against issued chains.

func writePEM(t *testing.T, dir, name string, ders ...[]byte) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, EncodePEM(ders...), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func runOpenSSL(t *testing.T, args ...string) (string, error) {
	t.Helper()
	out, err := exec.Command(requireTool(t, "openssl"), args...).CombinedOutput()
	return string(out), err
}

// verifyWithOpenSSL verifies leaf -> intermediate -> root with openssl.
// ECDSA chains are checked in one call with -x509_strict. OpenSSL 3 applies
// an SM2 distinguishing ID only to the depth-0 certificate (openssl#23471),
// so SM2 chains are checked one link at a time, each with the GM/T ID.
func verifyWithOpenSSL(t *testing.T, profile string, root, inter, leaf []byte) error {
	t.Helper()
	dir := t.TempDir()
	r := writePEM(t, dir, "root.pem", root)
	i := writePEM(t, dir, "int.pem", inter)
	l := writePEM(t, dir, "leaf.pem", leaf)
	check := func(args ...string) error {
		out, err := runOpenSSL(t, args...)
		if err != nil {
			return &opensslError{args: args, out: out}
		}
		if !strings.Contains(out, ": OK") {
			return &opensslError{args: args, out: out}
		}
		return nil
	}
	if profile == ProfileECDSA {
		return check("verify", "-x509_strict", "-CAfile", r, "-untrusted", i, l)
	}
	distid := "distid:" + SM2SignerID
	if err := check("verify", "-x509_strict", "-vfyopt", distid, "-CAfile", r, i); err != nil {
		return err
	}
	return check("verify", "-x509_strict", "-partial_chain", "-vfyopt", distid, "-CAfile", i, l)
}

type opensslError struct {
	args []string
	out  string
}

func (e *opensslError) Error() string {
	return "openssl " + strings.Join(e.args, " ") + ": " + strings.TrimSpace(e.out)
}

func TestOpenSSLVerifiesChains(t *testing.T) {
	requireTool(t, "openssl")
	l := newLocal(t, "example.org")
	other := newLocal(t, "example.org") // same trust domain, different root
	for _, p := range Profiles() {
		t.Run(p.Name(), func(t *testing.T) {
			svid, _ := issue(t, l, p.Name(), "spiffe://example.org/ns/prod/sa/api", "api.prod.svc")
			root, _ := l.Root(p.Name())
			leaf, inter := svid.Certificates[0], svid.Certificates[1]
			if err := verifyWithOpenSSL(t, p.Name(), root.Certificate().Raw, inter, leaf); err != nil {
				t.Fatalf("issued chain refused: %v", err)
			}

			otherRoot, _ := other.Root(p.Name())
			if err := verifyWithOpenSSL(t, p.Name(), otherRoot.Certificate().Raw, inter, leaf); err == nil {
				t.Error("chain verified under another root")
			}

			// A changed byte of the identity breaks the signature.
			i := bytes.Index(leaf, []byte("/sa/api"))
			if i < 0 {
				t.Fatal("SPIFFE ID not found in leaf DER")
			}
			tampered := bytes.Clone(leaf)
			tampered[i+4] = 'x' // "/sa/xpi"
			if err := verifyWithOpenSSL(t, p.Name(), root.Certificate().Raw, inter, tampered); err == nil {
				t.Error("leaf with a tampered SPIFFE ID verified")
			}
			// So does a changed signature byte.
			tampered = bytes.Clone(leaf)
			tampered[len(tampered)-1] ^= 0x01
			if err := verifyWithOpenSSL(t, p.Name(), root.Certificate().Raw, inter, tampered); err == nil {
				t.Error("leaf with a tampered signature verified")
			}
		})
	}
}

func TestOpenSSLReadsCRL(t *testing.T) {
	requireTool(t, "openssl")
	l := newLocal(t, "example.org")
	svid, _ := issue(t, l, ProfileECDSA, "spiffe://example.org/revoked")
	der, err := l.NextCRL(ProfileECDSA, false, []Revocation{{SerialNumber: svid.SerialNumber, RevokedAt: svid.NotBefore, ReasonCode: 1}})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	crl := filepath.Join(dir, "crl.der")
	if err := os.WriteFile(crl, der, 0o644); err != nil {
		t.Fatal(err)
	}
	inter := writePEM(t, dir, "int.pem", svid.Certificates[1])
	out, err := runOpenSSL(t, "crl", "-inform", "DER", "-in", crl, "-CAfile", inter, "-noout", "-text")
	if err != nil || !strings.Contains(out, "verify OK") {
		t.Fatalf("openssl crl: %v\n%s", err, out)
	}
	if !strings.Contains(out, "X509v3 CRL Number") || !strings.Contains(out, "Key Compromise") {
		t.Errorf("CRL lacks its number or the revocation reason:\n%s", out)
	}
	// The revoked leaf fails verification with CRL checking (ECDSA only: openssl
	// cannot apply the SM2 ID to CRLs, openssl#32744).
	root, _ := l.Root(ProfileECDSA)
	rootCRL, err := l.NextCRL(ProfileECDSA, true, nil)
	if err != nil {
		t.Fatal(err)
	}
	crls := filepath.Join(dir, "crls.pem")
	if err := os.WriteFile(crls, append(pemCRL(der), pemCRL(rootCRL)...), 0o644); err != nil {
		t.Fatal(err)
	}
	r := writePEM(t, dir, "root.pem", root.Certificate().Raw)
	leaf := writePEM(t, dir, "leaf.pem", svid.Certificates[0])
	out, err = runOpenSSL(t, "verify", "-crl_check_all", "-CRLfile", crls, "-CAfile", r, "-untrusted", inter, leaf)
	if err == nil || !strings.Contains(out, "revoked") {
		t.Errorf("revoked leaf was not refused: %v\n%s", err, out)
	}
}
