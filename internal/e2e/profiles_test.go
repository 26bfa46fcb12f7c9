package e2e

import (
	"context"
	"encoding/asn1"
	"strings"
	"testing"
	"time"

	"github.com/emmansun/gmsm/smx509"
	"github.com/meshca/meshca/agent"
	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/proto/operatorpb"
	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// createEntry creates an entry of profile for the test's uid under parent.
func (e *env) createEntry(parent, id, profile string) *operatorpb.Entry {
	e.t.Helper()
	resp, err := e.op.CreateEntry(tctx(e.t, 20*time.Second), &operatorpb.CreateEntryRequest{Entry: &operatorpb.Entry{
		ParentId: parent, SpiffeId: id, Profile: profile,
		Selectors: []*operatorpb.Selector{{Type: "unix", Value: "uid:" + uid}},
	}})
	if err != nil {
		e.t.Fatalf("create %s entry %s: %v", profile, id, err)
	}
	return resp.Entry
}

// rawFetch is one FetchX509SVID call with our own gRPC client, sending
// the profiles metadata when profiles is not empty.
func rawFetch(t *testing.T, a *agent.Agent, profiles string) (*workload.X509SVIDResponse, error) {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+a.SocketPath(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ctx = metadata.AppendToOutgoingContext(ctx, "workload.spiffe.io", "true")
	if profiles != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, agent.ProfilesMetadataKey, profiles)
	}
	stream, err := workload.NewSpiffeWorkloadAPIClient(conn).FetchX509SVID(ctx, &workload.X509SVIDRequest{})
	if err != nil {
		return nil, err
	}
	return stream.Recv()
}

// An SM2 entry for a workload must not break its standard clients:
// go-spiffe's unmodified client keeps getting the ECDSA SVIDs (its
// X509Source becomes ready), and only a client that asks for SM2 with the
// profiles metadata gets the SM2 SVID. A workload with SM2 entries only
// gets PermissionDenied from a standard client, saying why.
func TestStandardClientsNeverGetSM2(t *testing.T) {
	e := startServer(t)
	token := e.token()
	parent := agentIDFor(token)
	// The SM2 entry first, and sorting before the ECDSA one by SPIFFE ID:
	// neither creation order nor ID order may make it the default.
	e.createEntry(parent, "spiffe://example.org/a/gm", ca.ProfileSM2)
	e.createEntry(parent, "spiffe://example.org/z/web", ca.ProfileECDSA)
	a := e.startAgent(token, 0.5)
	c := client(t, a)

	var x *workloadapi.X509Context
	var err error
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if x, err = c.FetchX509Context(tctx(t, 5*time.Second)); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("go-spiffe FetchX509Context with an SM2 entry present: %v", err)
		}
	}
	if len(x.SVIDs) != 1 || x.SVIDs[0].ID.String() != "spiffe://example.org/z/web" {
		t.Fatalf("go-spiffe got %d SVIDs %v, want only the ECDSA spiffe://example.org/z/web", len(x.SVIDs), x.SVIDs)
	}
	if _, _, err := x509svid.Verify(x.SVIDs[0].Certificates, x.Bundles); err != nil {
		t.Errorf("the ECDSA SVID does not verify: %v", err)
	}

	// NewX509Source becomes ready, and its default SVID is the ECDSA one.
	src, err := workloadapi.NewX509Source(tctx(t, 20*time.Second), workloadapi.WithClientOptions(workloadapi.WithAddr("unix://"+a.SocketPath())))
	if err != nil {
		t.Fatalf("NewX509Source with an SM2 entry present: %v", err)
	}
	defer src.Close()
	if s, err := src.GetX509SVID(); err != nil || s.ID.String() != "spiffe://example.org/z/web" {
		t.Errorf("X509Source SVID = %v, %v; want spiffe://example.org/z/web", s, err)
	}

	// A client asking for both gets both, ECDSA (the default) first; one
	// asking for SM2 gets the SM2 SVID, with the SM2 roots.
	resp, err := rawFetch(t, a, "ecdsa,sm2")
	if err != nil || len(resp.Svids) != 2 || resp.Svids[0].SpiffeId != "spiffe://example.org/z/web" || resp.Svids[1].SpiffeId != "spiffe://example.org/a/gm" {
		t.Fatalf("fetch with %s: ecdsa,sm2 = %v, %v; want the ECDSA SVID, then the SM2 one", agent.ProfilesMetadataKey, resp, err)
	}
	resp, err = rawFetch(t, a, "sm2")
	if err != nil || len(resp.Svids) != 1 || resp.Svids[0].SpiffeId != "spiffe://example.org/a/gm" {
		t.Fatalf("fetch with %s: sm2 = %v, %v; want the SM2 SVID only", agent.ProfilesMetadataKey, resp, err)
	}
	var certs []*smx509.Certificate
	for rest := resp.Svids[0].X509Svid; len(rest) > 0; {
		var v asn1.RawValue
		if rest, err = asn1.Unmarshal(rest, &v); err != nil {
			t.Fatal(err)
		}
		c, err := smx509.ParseCertificate(v.FullBytes)
		if err != nil {
			t.Fatalf("the SM2 SVID does not parse as SM2: %v", err)
		}
		certs = append(certs, c)
	}
	root, err := smx509.ParseCertificate(resp.Svids[0].Bundle)
	if err != nil {
		t.Fatalf("the SM2 SVID's bundle is not one SM2 root: %v", err)
	}
	roots, inters := smx509.NewCertPool(), smx509.NewCertPool()
	roots.AddCert(root)
	for _, c := range certs[1:] {
		inters.AddCert(c)
	}
	if _, err := certs[0].Verify(smx509.VerifyOptions{Roots: roots, Intermediates: inters, KeyUsages: []smx509.ExtKeyUsage{smx509.ExtKeyUsageAny}}); err != nil {
		t.Errorf("the SM2 SVID does not verify with its bundle: %v", err)
	}
	if _, err := rawFetch(t, a, "rsa"); status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), agent.ProfilesMetadataKey) {
		t.Errorf("fetch with an unknown profile: %v, want InvalidArgument naming %s", err, agent.ProfilesMetadataKey)
	}
}

// A workload whose only entry is SM2 gets PermissionDenied from a standard
// client, with the reason, and its SVID from a client that asks for SM2.
func TestSM2OnlyWorkload(t *testing.T) {
	e := startServer(t)
	token := e.token()
	parent := agentIDFor(token)
	e.createEntry(parent, "spiffe://example.org/gm/only", ca.ProfileSM2)
	a := e.startAgent(token, 0.5)
	var resp *workload.X509SVIDResponse
	var err error
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if resp, err = rawFetch(t, a, "sm2"); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no SM2 SVID: %v", err)
		}
	}
	if len(resp.Svids) != 1 || resp.Svids[0].SpiffeId != "spiffe://example.org/gm/only" {
		t.Fatalf("SM2 client got %v", resp)
	}
	_, err = client(t, a).FetchX509Context(tctx(t, 5*time.Second))
	if status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "sm2") || !strings.Contains(err.Error(), agent.ProfilesMetadataKey) {
		t.Fatalf("go-spiffe with only an SM2 entry: %v, want PermissionDenied naming sm2 and %s", err, agent.ProfilesMetadataKey)
	}
}
