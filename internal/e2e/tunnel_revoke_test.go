package e2e

import (
	"bytes"
	"crypto/tls"
	"encoding/hex"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/meshca/meshca/audit"
	"github.com/meshca/meshca/proto/operatorpb"
)

// dialWith opens an mTLS connection to a tunnel's inbound listener with
// cert, sends data and returns what comes back before the tunnel closes it.
func dialWith(addr string, cert tls.Certificate, data []byte) ([]byte, error) {
	// The client does not check the tunnel here: only what the tunnel
	// decides about this certificate matters.
	c, err := tls.Dial("tcp", addr, &tls.Config{Certificates: []tls.Certificate{cert}, InsecureSkipVerify: true, MinVersion: tls.VersionTLS13})
	if err != nil {
		return nil, err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write(data); err != nil {
		return nil, err
	}
	if err := c.CloseWrite(); err != nil {
		return nil, err
	}
	return io.ReadAll(c)
}

// Revocation reaches a tunnel endpoint: after `cert revoke` of A's serial
// (the operator API), B's tunnel refuses a connection that presents A's
// revoked certificate, with the refusal audited; A's agent re-issues A's
// SVID, and A's next connection with the fresh one goes through.
func TestTunnelRefusesRevokedPeer(t *testing.T) {
	f := newMeshFixture(t, time.Hour, 0.5, 0)
	ctx := tctx(t, 2*time.Minute)

	// A's current SVID, as its tunnel presents it.
	svid, err := client(t, f.agentA).FetchX509SVID(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if svid.ID.String() != f.idA {
		t.Fatalf("agent A serves %s", svid.ID)
	}
	var old tls.Certificate
	for _, c := range svid.Certificates {
		old.Certificate = append(old.Certificate, c.Raw)
	}
	old.PrivateKey = svid.PrivateKey
	oldSerial := svid.Certificates[0].SerialNumber
	if got, err := dialWith(f.strict, old, []byte("before")); err != nil || string(got) != "before" {
		t.Fatalf("A's certificate before the revocation: %q, %v", got, err)
	}

	resp, err := f.e.op.RevokeCertificates(ctx, &operatorpb.RevokeCertificatesRequest{Serial: hex.EncodeToString(oldSerial.Bytes()), Reason: 1})
	if err != nil || len(resp.Certificates) != 1 {
		t.Fatalf("revoke: %v, %v", resp, err)
	}
	revoked := time.Now()
	waitUntil(t, 20*time.Second, "B's tunnel refuses A's revoked certificate", func() bool {
		got, err := dialWith(f.strict, old, []byte("after"))
		return err != nil || !bytes.Equal(got, []byte("after"))
	})
	t.Logf("refused %s after the revocation", time.Since(revoked).Round(time.Millisecond))
	// The handshake fails in the peer's verification: the refusal names
	// the revocation.
	if _, err := f.eventsB.Wait(ctx, func(e audit.Event) bool {
		return e.Action == "tunnel.connect" && e.Decision == audit.Deny && strings.Contains(e.Reason, "revoked")
	}); err != nil {
		t.Fatal(err)
	}

	// A's agent renews the revoked SVID; through A's tunnel, A reaches B
	// again, with a certificate of another serial.
	waitUntil(t, 30*time.Second, "A reaches B with a fresh SVID", func() bool {
		got, err := roundTrip(f.outA, []byte("fresh"))
		return err == nil && string(got) == "fresh"
	})
	if _, err := f.eventsB.Wait(ctx, func(e audit.Event) bool {
		return e.Action == "tunnel.connect" && e.Decision == audit.Allow && e.Actor == f.idA && e.Details["peer_serial"] != "" &&
			e.Details["peer_serial"] != oldSerial.Text(16)
	}); err != nil {
		t.Fatal(err)
	}
}
