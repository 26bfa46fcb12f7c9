package main

import (
	"context"
	"encoding/pem"
	"fmt"
	"path/filepath"
	"time"

	"github.com/meshca/meshca/ca"
)

// svidRequest is an X509-SVID to mint from a local CA.
type svidRequest struct {
	profile  ca.Profile
	spiffeID string
	dnsNames []string
	ttl      time.Duration
}

// mintedSVID is an issued X509-SVID and the PEM of its private key.
type mintedSVID struct {
	svid   *ca.X509SVID
	keyPEM []byte
}

// mint generates a workload key, makes a CSR with it and has the profile's
// active intermediate sign it. Errors about the request are the ca
// package's *ca.RequestError.
func mint(ctx context.Context, l *ca.LocalCA, r svidRequest) (*mintedSVID, error) {
	name := r.profile.Name()
	issuer, err := l.Issuer(name)
	if err != nil {
		return nil, fmt.Errorf("%s issuer: %w", name, err)
	}
	key, err := r.profile.GenerateKey()
	if err != nil {
		return nil, fmt.Errorf("generate %s workload key: %w", name, err)
	}
	csr, err := r.profile.CreateCSR(key)
	if err != nil {
		return nil, fmt.Errorf("create %s CSR: %w", name, err)
	}
	svid, err := issuer.SignX509SVID(ctx, ca.X509SVIDParams{CSR: csr, SPIFFEID: r.spiffeID, DNSNames: r.dnsNames, TTL: r.ttl})
	if err != nil {
		return nil, err
	}
	der, err := r.profile.MarshalPrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("encode %s workload key: %w", name, err)
	}
	defer clear(der)
	return &mintedSVID{svid: svid, keyPEM: pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})}, nil
}

// svidFiles are the paths an X509-SVID was written to. Leaf and
// Intermediates are written by dev only.
type svidFiles struct {
	SVID          string `json:"svid"`
	Key           string `json:"key"`
	Bundle        string `json:"bundle"`
	Leaf          string `json:"leaf,omitempty"`
	Intermediates string `json:"intermediates,omitempty"`
}

// writeSVID writes dir/key.pem (0600), dir/svid.pem (leaf then
// intermediates) and dir/bundle.pem (roots), and with split also
// dir/leaf.pem and dir/intermediates.pem.
func writeSVID(dir string, m *mintedSVID, bundlePEM []byte, split bool) (svidFiles, error) {
	f := svidFiles{
		SVID:   filepath.Join(dir, "svid.pem"),
		Key:    filepath.Join(dir, "key.pem"),
		Bundle: filepath.Join(dir, "bundle.pem"),
	}
	files := []outFile{
		{f.Key, m.keyPEM, modePrivate},
		{f.SVID, m.svid.ChainPEM(), modePublic},
		{f.Bundle, bundlePEM, modePublic},
	}
	if split {
		f.Leaf = filepath.Join(dir, "leaf.pem")
		f.Intermediates = filepath.Join(dir, "intermediates.pem")
		files = append(files,
			outFile{f.Leaf, ca.EncodePEM(m.svid.Certificates[0]), modePublic},
			outFile{f.Intermediates, ca.EncodePEM(m.svid.Certificates[1:]...), modePublic})
	}
	if err := writeFiles(dir, files...); err != nil {
		return svidFiles{}, fmt.Errorf("write %s X509-SVID: %w", m.svid.Profile, err)
	}
	return f, nil
}

// svidReport describes an X509-SVID that was written out.
type svidReport struct {
	Profile   string    `json:"profile"`
	SPIFFEID  string    `json:"spiffe_id"`
	DNSNames  []string  `json:"dns_names,omitempty"`
	Serial    string    `json:"serial"`
	NotBefore time.Time `json:"not_before"`
	NotAfter  time.Time `json:"not_after"`
	Files     svidFiles `json:"files"`
	// Verify are shell commands that verify the chain with openssl.
	Verify []string `json:"verify,omitempty"`
}

func newSVIDReport(m *mintedSVID, dnsNames []string, f svidFiles) svidReport {
	return svidReport{
		Profile: m.svid.Profile, SPIFFEID: m.svid.SPIFFEID, DNSNames: dnsNames,
		Serial:    fmt.Sprintf("%x", m.svid.SerialNumber),
		NotBefore: m.svid.NotBefore.UTC(), NotAfter: m.svid.NotAfter.UTC(),
		Files: f,
	}
}

// opensslVerifyCommands are the openssl commands that verify a split chain
// (leaf.pem, intermediates.pem) against bundle.pem. OpenSSL 3 applies the
// SM2 distinguishing ID only to the certificate at depth 0, so an SM2 chain
// is verified one link at a time.
func opensslVerifyCommands(profile string, f svidFiles) []string {
	if profile == ca.ProfileSM2 {
		distid := "distid:" + ca.SM2SignerID
		return []string{
			shellCommand("openssl", "verify", "-x509_strict", "-vfyopt", distid, "-CAfile", f.Bundle, f.Intermediates),
			shellCommand("openssl", "verify", "-x509_strict", "-partial_chain", "-vfyopt", distid, "-CAfile", f.Intermediates, f.Leaf),
		}
	}
	return []string{
		shellCommand("openssl", "verify", "-x509_strict", "-CAfile", f.Bundle, "-untrusted", f.Intermediates, f.Leaf),
	}
}

// printSVID writes the table form of an svidReport.
func printSVID(t *table, r svidReport) {
	t.row("SPIFFE ID", r.SPIFFEID)
	for _, n := range r.DNSNames {
		t.row("DNS name", n)
	}
	t.row("serial", r.Serial)
	t.row("not before", r.NotBefore.Format(time.RFC3339))
	t.row("not after", r.NotAfter.Format(time.RFC3339))
	t.row("svid.pem", r.Files.SVID+" (leaf, then intermediates)")
	if r.Files.Leaf != "" {
		t.row("leaf.pem", r.Files.Leaf)
		t.row("intermediates.pem", r.Files.Intermediates)
	}
	t.row("key.pem", r.Files.Key+" (private key, mode 0600)")
	t.row("bundle.pem", r.Files.Bundle+" (roots of the "+r.Profile+" profile)")
}
