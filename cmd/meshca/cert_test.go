package main

import (
	"bytes"
	"crypto/x509"
	"encoding/hex"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/meshca/meshca/server"
)

// TestCertRevokeListShowAndCRLFetch mints two certificates through a
// server, then with the cert and crl commands: lists and shows them;
// refuses a revocation without a terminal and without --yes (nothing
// changes); dry-runs it; revokes one with --yes --wait; finds it in
// cert list --revoked and in the CRL crl fetch saves, which openssl reads
// and the server's --crl-addr serves; and refuses an unknown serial.
func TestCertRevokeListShowAndCRLFetch(t *testing.T) {
	t.Parallel()
	env := testEnv(t)
	dataDir := shortTempDir(t)
	sock := filepath.Join(dataDir, server.AdminSocketName)
	addr := "unix://" + sock
	ports := freePorts(t, 3)
	srv := startServer(t, env, sock, "--data-dir", dataDir, "--node-id", "s1", "--raft-addr", ports[0], "--api-addr", ports[1],
		"--bootstrap", "--trust-domain", "example.org", "--crl-addr", ports[2])
	waitLeader(t, env, sock, "s1")
	waitFor(t, 10*time.Second, "bootstrap state written", func() (bool, string) {
		return strings.Contains(srv.stderr.String(), bootstrappedLog), "no " + bootstrappedLog + " in the log"
	})
	mint := func(id string) *x509.Certificate {
		out := filepath.Join(t.TempDir(), "svid")
		mustSucceed(t, env, "x509", "mint", "--spiffe-id", id, "--addr", addr, "--out", out)
		c, err := x509.ParseCertificate(splitPEM(t, readFile(t, filepath.Join(out, "svid.pem")))[0])
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	a, b := mint("spiffe://example.org/ops/a"), mint("spiffe://example.org/ops/b")
	serialA := hex.EncodeToString(a.SerialNumber.Bytes())

	var list struct {
		Certificates  []certReport `json:"certificates"`
		NextPageToken string       `json:"next_page_token"`
		Source        string       `json:"source"`
	}
	decodeJSON(t, mustSucceed(t, env, "cert", "list", "--addr", addr, "--spiffe-id", "spiffe://example.org/ops/a", "--output", "json"), &list)
	if len(list.Certificates) != 1 || list.Certificates[0].Serial != serialA || list.Certificates[0].Revoked || list.Certificates[0].NodeID != "operator" {
		t.Fatalf("cert list --spiffe-id: %+v", list)
	}
	var show certReport
	decodeJSON(t, mustSucceed(t, env, "cert", "show", serialA, "--addr", addr, "--output", "json"), &show)
	if show.SPIFFEID != "spiffe://example.org/ops/a" || !show.NotAfter.Equal(a.NotAfter.UTC()) || !strings.HasPrefix(show.IssuerID, "ecdsa/intermediate/") {
		t.Fatalf("cert show: %+v", show)
	}
	if r := mustSucceed(t, env, "cert", "list", "--addr", addr, "--expiring-within", "720h"); !strings.Contains(r.stdout, serialA) ||
		!strings.Contains(r.stdout, hex.EncodeToString(b.SerialNumber.Bytes())) || !strings.HasPrefix(r.stdout, "SERIAL") {
		t.Errorf("cert list --expiring-within:\n%s", r.stdout)
	}

	// No terminal, no --yes: refused, nothing revoked.
	if r := meshca(t, env, "cert", "revoke", serialA, "--addr", addr); r.code != exitUsage || !strings.Contains(r.stderr, "pass --yes") {
		t.Errorf("revoke without --yes: exit %d\n%s", r.code, r.stderr)
	}
	var dry revokeReport
	decodeJSON(t, mustSucceed(t, env, "cert", "revoke", serialA, "--addr", addr, "--dry-run", "--output", "json"), &dry)
	if !dry.DryRun || len(dry.Certificates) != 1 || dry.Certificates[0].Revoked {
		t.Errorf("dry run: %+v", dry)
	}
	decodeJSON(t, mustSucceed(t, env, "cert", "list", "--addr", addr, "--revoked", "--output", "json"), &list)
	if len(list.Certificates) != 0 {
		t.Fatalf("revoked after a refusal and a dry run: %+v", list)
	}
	if r := meshca(t, env, "cert", "revoke", "--addr", addr, "--yes"); r.code != exitUsage {
		t.Errorf("revoke of nothing: exit %d", r.code)
	}
	if r := meshca(t, env, "cert", "revoke", "abcdef0123", "--addr", addr, "--yes", "--output", "json"); r.code != exitError || !strings.Contains(r.stderr, `"code":"not_found"`) {
		t.Errorf("revoke of an unknown serial: exit %d\n%s", r.code, r.stderr)
	}
	if r := meshca(t, env, "cert", "revoke", serialA, "--reason", "bogus", "--addr", addr, "--yes"); r.code != exitUsage || !strings.Contains(r.stderr, "keyCompromise") {
		t.Errorf("revoke with an unknown reason: exit %d\n%s", r.code, r.stderr)
	}

	var rev revokeReport
	decodeJSON(t, mustSucceed(t, env, "cert", "revoke", serialA, "--addr", addr, "--yes", "--wait", "--reason", "keyCompromise", "--output", "json"), &rev)
	if rev.DryRun || len(rev.Certificates) != 1 || !rev.Certificates[0].Revoked || rev.Certificates[0].Reason != "keyCompromise" || len(rev.CRLs) != 1 {
		t.Fatalf("revoke: %+v", rev)
	}
	decodeJSON(t, mustSucceed(t, env, "cert", "list", "--addr", addr, "--revoked", "--output", "json"), &list)
	if len(list.Certificates) != 1 || list.Certificates[0].Serial != serialA {
		t.Errorf("cert list --revoked: %+v", list)
	}

	// crl fetch saves the issuer's CRL: openssl reads it, it lists A, not B.
	crlFile := filepath.Join(t.TempDir(), "i.crl")
	var crl crlReport
	decodeJSON(t, mustSucceed(t, env, "crl", "fetch", "--issuer", show.IssuerID, "--out", crlFile, "--addr", addr, "--output", "json"), &crl)
	if crl.Number < 2 || crl.Revoked != 1 || crl.File != crlFile {
		t.Errorf("crl fetch: %+v", crl)
	}
	out, err := exec.Command(requireOpenSSL(t), "crl", "-inform", "DER", "-in", crlFile, "-noout", "-text").CombinedOutput()
	if err != nil || !strings.Contains(strings.ToLower(string(out)), strings.ToLower(serialA)) || !strings.Contains(string(out), "Key Compromise") ||
		strings.Contains(strings.ToLower(string(out)), strings.ToLower(hex.EncodeToString(b.SerialNumber.Bytes()))) {
		t.Errorf("openssl crl: %v\n%s", err, out)
	}
	// The HTTP endpoint serves the same bytes.
	resp, err := http.Get("http://" + ports[2] + "/crl/" + show.IssuerID)
	if err != nil {
		t.Fatal(err)
	}
	served, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if saved, _ := os.ReadFile(crlFile); resp.StatusCode != http.StatusOK || !bytes.Equal(served, saved) {
		t.Errorf("GET /crl/%s: %s, %d bytes, want the fetched CRL", show.IssuerID, resp.Status, len(served))
	}
	if r := meshca(t, env, "crl", "fetch", "--issuer", "ecdsa/intermediate/00", "--out", crlFile, "--addr", addr); r.code != exitError {
		t.Errorf("crl fetch of an unknown issuer: exit %d", r.code)
	}
	if r := meshca(t, env, "node", "ban", "spiffe://example.org/meshca/agent/join_token/00", "--addr", addr, "--yes", "--output", "json"); r.code != exitError || !strings.Contains(r.stderr, `"code":"not_found"`) {
		t.Errorf("ban of an unknown node: exit %d\n%s", r.code, r.stderr)
	}

	// Authority lifecycle: the active root cannot be tainted, an active
	// intermediate not revoked; the intermediate is tainted (its server
	// activates a successor), and revoking it is refused while the minted
	// certificate B (which no agent re-issues) still chains to it, naming
	// the holder, until --force.
	var auths struct {
		Authorities []authorityReport `json:"authorities"`
	}
	decodeJSON(t, mustSucceed(t, env, "authority", "show", "--addr", addr, "--output", "json"), &auths)
	var rootID string
	var inter authorityReport
	for _, x := range auths.Authorities {
		if x.Kind == "root" && x.Profile == "ecdsa" {
			rootID = x.ID
		}
		if x.ID == show.IssuerID {
			inter = x
		}
	}
	if inter.State != "ACTIVE" || inter.LiveCertificates < 1 || inter.NextStep == "" {
		t.Fatalf("authority show: %+v", inter)
	}
	if r := meshca(t, env, "authority", "taint", rootID, "--addr", addr, "--yes", "--output", "json"); r.code != exitError || !strings.Contains(r.stderr, "failed_precondition") {
		t.Errorf("taint the only root: exit %d\n%s", r.code, r.stderr)
	}
	if r := meshca(t, env, "authority", "revoke", inter.ID, "--addr", addr, "--yes", "--output", "json"); r.code != exitError || !strings.Contains(r.stderr, "only a tainted authority") {
		t.Errorf("revoke an active intermediate: exit %d\n%s", r.code, r.stderr)
	}
	if r := meshca(t, env, "authority", "taint", inter.ID, "--addr", addr); r.code != exitUsage || !strings.Contains(r.stderr, "pass --yes") {
		t.Errorf("taint without --yes: exit %d\n%s", r.code, r.stderr)
	}
	var step authorityStepReport
	decodeJSON(t, mustSucceed(t, env, "authority", "taint", inter.ID, "--addr", addr, "--yes", "--output", "json"), &step)
	if step.Authority.State != "TAINTED" || step.Authority.PendingCertificates < 1 {
		t.Fatalf("taint: %+v", step)
	}
	if r := meshca(t, env, "authority", "revoke", inter.ID, "--addr", addr, "--yes"); r.code != exitError || !strings.Contains(r.stderr, "operator") || !strings.Contains(r.stderr, "--force") {
		t.Errorf("revoke while certificates chain to it: exit %d\n%s", r.code, r.stderr)
	}
	decodeJSON(t, mustSucceed(t, env, "authority", "revoke", inter.ID, "--force", "--watch", "--interval", "50ms", "--addr", addr, "--yes", "--output", "json"), &step)
	if step.Authority.State != "REVOKED" || !step.Done {
		t.Errorf("revoke --force: %+v", step)
	}
	if resp, err := http.Get("http://" + ports[2] + "/crl/" + inter.ID); err != nil || resp.StatusCode != http.StatusNotFound {
		t.Errorf("the revoked intermediate's CRL is still served: %v, %v", resp, err)
	} else {
		resp.Body.Close()
	}
	waitFor(t, 10*time.Second, "the root's CRL lists the intermediate", func() (bool, string) {
		r := meshca(t, env, "crl", "fetch", "--issuer", rootID, "--out", crlFile, "--pem", "--addr", addr)
		out, _ := exec.Command(requireOpenSSL(t), "crl", "-in", crlFile, "-noout", "-text").CombinedOutput()
		serial := strings.TrimPrefix(inter.ID, "ecdsa/intermediate/")
		return r.code == exitOK && strings.Contains(strings.ToLower(string(out)), serial), string(out)
	})
	// The server signs again, with its successor.
	mint("spiffe://example.org/ops/c")
}

// confirm asks on a terminal and goes on only on yes.
func TestConfirm(t *testing.T) {
	for _, c := range []struct {
		answer string
		ok     bool
	}{{"y\n", true}, {"YES\n", true}, {"n\n", false}, {"\n", false}, {"", false}} {
		var errb bytes.Buffer
		a := &app{stdout: io.Discard, stderr: &errb, stdin: strings.NewReader(c.answer), terminal: func(io.Reader) bool { return true }}
		err := a.confirm(nil, destructiveOptions{}, "This revokes 1 certificate(s) of x")
		if (err == nil) != c.ok || !strings.Contains(errb.String(), "Proceed? [y/N]") {
			t.Errorf("answer %q: %v (prompt %q)", c.answer, err, errb.String())
		}
	}
	a := &app{stderr: io.Discard, stdin: strings.NewReader("y\n"), terminal: func(io.Reader) bool { return false }}
	if err := a.confirm(nil, destructiveOptions{}, "x"); err == nil {
		t.Error("confirmed without a terminal")
	}
	if err := a.confirm(nil, destructiveOptions{yes: true}, "x"); err != nil {
		t.Errorf("--yes: %v", err)
	}
}
