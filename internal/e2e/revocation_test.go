package e2e

import (
	"bytes"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"os/exec"
	"strings"
	"testing"
	"time"

	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"github.com/jonboulle/clockwork"
	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/internal/testtool"
	"github.com/meshca/meshca/proto/operatorpb"
	"github.com/meshca/meshca/server"
	"google.golang.org/grpc/codes"
	grpcstatus "google.golang.org/grpc/status"
)

// crlLists reports whether a validation context carries a CRL of issuer
// listing serial, and returns that issuer's CRL number.
func crlLists(t testing.TB, vc *tlsv3.CertificateValidationContext, issuer *x509.Certificate, serial *big.Int) (bool, *big.Int) {
	t.Helper()
	for _, der := range pemDERs(t, vc.GetCrl().GetInlineBytes(), "X509 CRL") {
		rl, err := x509.ParseRevocationList(der)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(rl.RawIssuer, issuer.RawSubject) || !bytes.Equal(rl.AuthorityKeyId, issuer.SubjectKeyId) {
			continue
		}
		if err := rl.CheckSignatureFrom(issuer); err != nil {
			t.Fatalf("CRL of %s: %v", issuer.Subject, err)
		}
		for _, e := range rl.RevokedCertificateEntries {
			if e.SerialNumber.Cmp(serial) == 0 {
				return true, rl.Number
			}
		}
		return false, rl.Number
	}
	t.Fatalf("no CRL of %s in the validation context", issuer.Subject)
	return false, nil
}

// opensslRefuses runs openssl verify -crl_check_all on a served chain and
// validation context and fails the test unless openssl rejects the leaf as
// revoked.
func opensslRefuses(t testing.TB, chain []*x509.Certificate, vc *tlsv3.CertificateValidationContext) {
	t.Helper()
	dir := t.TempDir()
	var inter [][]byte
	for _, c := range chain[1:] {
		inter = append(inter, c.Raw)
	}
	args := []string{"verify", "-x509_strict", "-crl_check_all",
		"-CAfile", testtool.WriteFile(t, dir, "roots.pem", vc.GetTrustedCa().GetInlineBytes()),
		"-untrusted", testtool.WriteFile(t, dir, "inter.pem", ca.EncodePEM(inter...)),
		"-CRLfile", testtool.WriteFile(t, dir, "crls.pem", vc.GetCrl().GetInlineBytes()),
		testtool.WriteFile(t, dir, "leaf.pem", ca.EncodePEM(chain[0].Raw))}
	out, err := exec.Command(testtool.OpenSSL(t), args...).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "certificate revoked") {
		t.Fatalf("openssl %s: %v, want the leaf refused as revoked\n%s", strings.Join(args, " "), err, out)
	}
}

// follower returns a running server that is not the leader.
func (f *fleet) follower() *member {
	for _, m := range f.running() {
		if !m.srv.Node().IsLeader() {
			return m
		}
	}
	f.t.Fatal("no follower")
	return nil
}

// A serial revoked through a follower of a 3-server cluster reaches the
// validation context of an Envoy-like SDS client on a real agent; openssl
// -crl_check_all with the served CRLs refuses the revoked leaf and accepts
// another agent's; the DER CRL endpoint of every server serves it; the
// issuer's CRL number only grew. Revoking an unknown serial is refused
// and changes nothing.
func TestRevokedSerialReachesProxiesAndOpenSSL(t *testing.T) {
	testtool.OpenSSL(t)
	f := newFleet(t, fleetOpts{servers: 3, agents: 2, clock: clockwork.NewRealClock(), tune: func(c *server.Config) { c.CRLAddr = "127.0.0.1:0" }})
	var envs [2]*envoy
	var chains [2][]*x509.Certificate
	var vcs [2]*tlsv3.CertificateValidationContext
	for i := range envs {
		envs[i] = newEnvoy(t, sdsConn(t, f.agents[i]), fmt.Sprintf("sidecar~10.0.0.%d~w%d", i+1, i), "default", "ROOTCA")
		secs := secretsOf(t, envs[i].recvHaving("default", "ROOTCA"))
		chains[i], vcs[i] = servedChain(t, secs["default"], f.ids[i]), secs["ROOTCA"].GetValidationContext()
		opensslVerifyServed(t, chains[i], vcs[i])
	}
	leaf, issuer := chains[0][0], chains[0][1]
	_, before := crlLists(t, vcs[0], issuer, leaf.SerialNumber)
	op := operatorClient(t, f.follower().srv.AdminSocket())

	// Refusals first: nothing changes.
	for _, req := range []*operatorpb.RevokeCertificatesRequest{
		{Serial: "0badc0ffee"}, {Serial: "not hex"}, {}, {Serial: hex.EncodeToString(leaf.SerialNumber.Bytes()), SpiffeId: f.ids[0]},
		{Serial: hex.EncodeToString(leaf.SerialNumber.Bytes()), Reason: 7},
	} {
		_, err := op.RevokeCertificates(tctx(t, 10*time.Second), req)
		want := codes.InvalidArgument
		if req.Serial == "0badc0ffee" {
			want = codes.NotFound
		}
		if grpcstatus.Code(err) != want {
			t.Errorf("revoke %+v: %v, want %s", req, err, want)
		}
	}
	if l, err := op.ListCertificates(tctx(t, 10*time.Second), &operatorpb.ListCertificatesRequest{RevokedOnly: true}); err != nil || len(l.Certificates) != 0 {
		t.Fatalf("after refused revocations: %v revoked, %v", l, err)
	}
	dry, err := op.RevokeCertificates(tctx(t, 10*time.Second), &operatorpb.RevokeCertificatesRequest{Serial: leaf.SerialNumber.Text(16), DryRun: true})
	if err != nil || len(dry.Certificates) != 1 || dry.Certificates[0].SpiffeId != f.ids[0] || !dry.DryRun {
		t.Fatalf("dry run: %v, %v", dry, err)
	}
	if c, err := op.GetCertificate(tctx(t, 10*time.Second), &operatorpb.GetCertificateRequest{Serial: leaf.SerialNumber.Text(16)}); err != nil || c.Revoked {
		t.Fatalf("after a dry run: %v, %v", c, err)
	}

	start := time.Now()
	resp, err := op.RevokeCertificates(tctx(t, 10*time.Second), &operatorpb.RevokeCertificatesRequest{Serial: leaf.SerialNumber.Text(16), Reason: 1})
	if err != nil || len(resp.Certificates) != 1 || !resp.Certificates[0].Revoked {
		t.Fatalf("revoke: %v, %v", resp, err)
	}
	// The proxy's validation context carries the revocation.
	var vc *tlsv3.CertificateValidationContext
	for {
		r := envs[0].recv()
		envs[0].ack(r)
		if s := secretsOf(t, r)["ROOTCA"]; s != nil {
			if in, _ := crlLists(t, s.GetValidationContext(), issuer, leaf.SerialNumber); in {
				vc = s.GetValidationContext()
				break
			}
		}
	}
	t.Logf("revoke → CRL in the SDS validation context: %s", time.Since(start))
	_, after := crlLists(t, vc, issuer, leaf.SerialNumber)
	if after.Cmp(before) <= 0 {
		t.Errorf("CRL number %s after the revocation, %s before", after, before)
	}
	opensslRefuses(t, chains[0], vc)
	opensslVerifyServed(t, chains[1], vc) // the other agent's workload still verifies
	if c, err := op.GetCertificate(tctx(t, 10*time.Second), &operatorpb.GetCertificateRequest{Serial: leaf.SerialNumber.Text(16)}); err != nil || !c.Revoked || c.Reason != 1 {
		t.Errorf("cert show after the revocation: %v, %v", c, err)
	}
	l, err := op.ListCertificates(tctx(t, 10*time.Second), &operatorpb.ListCertificatesRequest{RevokedOnly: true})
	if err != nil || len(l.Certificates) != 1 || l.Certificates[0].Serial != hex.EncodeToString(leaf.SerialNumber.Bytes()) {
		t.Errorf("cert list --revoked: %v, %v", l, err)
	}
	// Revoking it again changes nothing and says it is revoked.
	again, err := op.RevokeCertificates(tctx(t, 10*time.Second), &operatorpb.RevokeCertificatesRequest{Serial: leaf.SerialNumber.Text(16)})
	if err != nil || !again.Certificates[0].Revoked || again.Certificates[0].Reason != 1 {
		t.Errorf("revoke again: %v, %v", again, err)
	}

	// Every server's DER endpoint serves the issuer's CRL with the serial.
	var issuerID string
	auths, err := op.ListAuthorities(tctx(t, 10*time.Second), &operatorpb.ListAuthoritiesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range auths.Authorities {
		if a.Id == "ecdsa/intermediate/"+hex.EncodeToString(issuer.SerialNumber.Bytes()) {
			issuerID = a.Id
		}
	}
	if issuerID == "" {
		t.Fatalf("no authority for the issuer %s", issuer.Subject)
	}
	for _, m := range f.running() {
		waitFor(t, 10*time.Second, m.cfg.NodeID+" serves the CRL", func() error {
			rl, err := fetchCRL(m.srv.CRLAddr(), issuerID)
			if err != nil {
				return err
			}
			if err := rl.CheckSignatureFrom(issuer); err != nil {
				return err
			}
			for _, e := range rl.RevokedCertificateEntries {
				if e.SerialNumber.Cmp(leaf.SerialNumber) == 0 {
					if e.ReasonCode != 1 {
						return fmt.Errorf("reason %d", e.ReasonCode)
					}
					return nil
				}
			}
			return errors.New("serial not listed yet")
		})
	}
	if r, err := http.Get("http://" + f.members[0].srv.CRLAddr() + "/crl/ecdsa/intermediate/00"); err != nil || r.StatusCode != http.StatusNotFound {
		t.Errorf("CRL of an unknown authority: %v, %v", r, err)
	} else {
		r.Body.Close()
	}
	// The operator API serves the same CRL.
	c, err := op.GetCRL(tctx(t, 10*time.Second), &operatorpb.GetCRLRequest{IssuerId: issuerID})
	if err != nil || c.Revoked < 1 || c.Number < after.Uint64() {
		t.Errorf("GetCRL: %v, %v", c, err)
	}
	if _, err := op.GetCRL(tctx(t, 10*time.Second), &operatorpb.GetCRLRequest{IssuerId: "nope"}); grpcstatus.Code(err) != codes.NotFound {
		t.Errorf("GetCRL of an unknown authority: %v", err)
	}
}

func fetchCRL(addr, id string) (*x509.RevocationList, error) {
	resp, err := http.Get("http://" + addr + "/crl/" + id + ".crl")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	der, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "application/pkix-crl" {
		return nil, fmt.Errorf("GET %s: %s %q", id, resp.Status, resp.Header.Get("Content-Type"))
	}
	return x509.ParseRevocationList(der)
}
