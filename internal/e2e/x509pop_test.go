package e2e

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha1"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"io"
	"log/slog"
	"math/big"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/meshca/meshca/agent"
	"github.com/meshca/meshca/attest"
	"github.com/meshca/meshca/attest/x509pop"
	"github.com/meshca/meshca/proto/operatorpb"
	"github.com/meshca/meshca/server"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// provisioningCA makes a CA and a node certificate it issued, as a
// provisioning system would.
func provisioningCA(t *testing.T, cn string) (root *x509.Certificate, leafDER []byte, key *ecdsa.PrivateKey) {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "provisioning " + cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, caKey.Public(), caKey)
	if err != nil {
		t.Fatal(err)
	}
	root, _ = x509.ParseCertificate(der)
	key, _ = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	leaf := &x509.Certificate{SerialNumber: big.NewInt(42), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	leafDER, err = x509.CreateCertificate(rand.Reader, leaf, root, key.Public(), caKey)
	if err != nil {
		t.Fatal(err)
	}
	return root, leafDER, key
}

// An agent attests with x509pop through the real node API stream: the server
// verifies the chain and challenges the agent, which signs the nonce.
// A certificate from another CA is refused.
func TestX509PoPAttestation(t *testing.T) {
	root, leaf, key := provisioningCA(t, "node-7")
	_, otherLeaf, otherKey := provisioningCA(t, "intruder")
	e2 := startServerWith(t, func(c *server.Config) {
		attestor, err := x509pop.New(x509pop.Config{TrustDomain: spiffeid.RequireTrustDomainFromString("example.org"), Roots: []*x509.Certificate{root}})
		if err != nil {
			t.Fatal(err)
		}
		c.NodeAttestors = []attest.NodeAttestor{attestor}
	})
	h := sha1.Sum(leaf)
	agentID := "spiffe://example.org/meshca/agent/x509pop/" + hex.EncodeToString(h[:])

	run := func(chain []byte, k *ecdsa.PrivateKey) (string, bool) {
		ev, err := x509pop.NewEvidence([][]byte{chain}, k)
		if err != nil {
			t.Fatal(err)
		}
		dir := tempDir(t)
		a, err := agent.New(agent.Config{Servers: []string{e2.srv.APIAddr()}, TrustBundle: e2.bundle, DataDir: dir,
			SocketPath: filepath.Join(dir, "agent.sock"), Evidence: ev, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		go a.Run(ctx)
		for ctx.Err() == nil {
			if _, err := os.Stat(filepath.Join(dir, "agent", "svid.pem")); err == nil {
				return dir, true
			}
			time.Sleep(20 * time.Millisecond)
		}
		return dir, false
	}
	if _, ok := run(leaf, key); !ok {
		t.Fatal("x509pop attestation failed")
	}
	node, err := e2.op.GetNode(tctx(t, 10*time.Second), &operatorpb.GetNodeRequest{SpiffeId: agentID})
	if err != nil {
		t.Fatalf("node %s not recorded: %v", agentID, err)
	}
	want := map[string]bool{"x509pop:subject:cn:node-7": false, "x509pop:serialnumber:2a": false}
	for _, s := range node.Node.Selectors {
		if _, ok := want[s.Type+":"+s.Value]; ok {
			want[s.Type+":"+s.Value] = true
		}
	}
	for s, found := range want {
		if !found {
			t.Errorf("node lacks selector %s: %v", s, node.Node.Selectors)
		}
	}
	if _, ok := run(otherLeaf, otherKey); ok {
		t.Error("a certificate from another CA attested")
	}
}
