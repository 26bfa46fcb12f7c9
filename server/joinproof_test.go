package server

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/meshca/meshca/proto/clusterpb"
	"github.com/meshca/meshca/server/joinsecret"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
)

// secretFile writes a server-join secret file (mode 0600) of fresh random
// secrets and returns its path and the secrets' lines.
func secretFile(t *testing.T, n int) (string, []string) {
	t.Helper()
	var lines []string
	for range n {
		b := make([]byte, 32)
		rand.Read(b)
		lines = append(lines, base64.StdEncoding.EncodeToString(b))
	}
	path := filepath.Join(t.TempDir(), "server-join-secret")
	if err := os.WriteFile(path, []byte(strings.Join(lines, "\n")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return path, lines
}

func secretJoinCfg(t *testing.T, node string, c1 Config, via *running, secret string) Config {
	cfg := testConfig(t, node, c1.KEK)
	cfg.Join, cfg.ServerJoinSecretFile, cfg.TrustDomain = via.srv.APIAddr(), secret, c1.TrustDomain
	return cfg
}

// Servers join with the pre-shared secret and no trust bundle, through the
// leader and through a follower (which checks the proof and forwards);
// nobody gets in by claiming the follower's check.
func TestJoinBySecret(t *testing.T) {
	secret, _ := secretFile(t, 1)
	c1 := testConfig(t, "s1", newKEK(t))
	c1.Bootstrap, c1.TrustDomain, c1.ServerJoinSecretFile = true, "example.org", secret
	s1 := mustStart(t, c1)
	waitBootstrapped(t, s1)
	c2 := secretJoinCfg(t, "s2", c1, s1, secret)
	s2 := mustStart(t, c2)
	c3 := secretJoinCfg(t, "s3", c1, s2, secret) // through the follower
	s3 := mustStart(t, c3)
	if string(s3.srv.TrustBundle()) != string(s1.srv.TrustBundle()) {
		t.Fatal("the server that joined through a follower has another trust bundle")
	}
	deadline := time.Now().Add(30 * time.Second)
	for _, r := range []*running{s1, s2, s3} {
		for {
			peers, err := r.srv.Node().Peers()
			if err == nil && len(peers) == 3 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s sees peers %v (%v), want 3", r.cfg.NodeID, peers, err)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	// A caller without a server certificate claiming that a member checked
	// its secret: refused by follower and leader alike.
	for _, via := range []*running{s1, s2} {
		conn, err := grpc.NewClient("passthrough:///"+via.srv.APIAddr(), grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS13})))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		_, err = clusterpb.NewClusterClient(conn).Join(ctx(t), &clusterpb.JoinRequest{NodeId: "intruder", RaftAddr: "127.0.0.1:1", ApiAddr: "127.0.0.1:2",
			SecretVerified: true, SecretId: "0123456789abcdef", KekId: c1.KEK.ID(), AttemptId: "x"})
		if status.Code(err) != codes.InvalidArgument {
			t.Fatalf("a forged secret_verified through %s: %v, want InvalidArgument", via.cfg.NodeID, err)
		}
	}
	if s1.srv.fsm.Read().Server("intruder") != nil {
		t.Fatal("the intruder was recorded")
	}
}

// fakeMember answers every Join as if it had admitted the server, with a
// member proof made with another secret: a man in the middle, or a
// cluster that is not the one the secret belongs to.
type fakeMember struct {
	clusterpb.UnimplementedClusterServer
	secret joinsecret.Secret
}

func (f *fakeMember) Join(ctx context.Context, _ *clusterpb.JoinRequest) (*clusterpb.JoinResponse, error) {
	p, _ := peer.FromContext(ctx)
	ekm, err := joinsecret.ExportedKey(p.AuthInfo.(credentials.TLSInfo).State)
	if err != nil {
		return nil, err
	}
	return &clusterpb.JoinResponse{TrustDomain: "example.org", MemberProof: f.secret.MemberProof(ekm)}, nil
}

// A joining server with a secret and no trust bundle believes nothing a
// member says unless the member proves it holds the same secret.
func TestJoinBySecretRefusesAMemberWithoutIt(t *testing.T) {
	mine, _ := secretFile(t, 1)
	theirs, _ := secretFile(t, 1)
	ts, err := joinsecret.Load(theirs)
	if err != nil {
		t.Fatal(err)
	}
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, _ := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	gs := grpc.NewServer(grpc.Creds(credentials.NewTLS(&tls.Config{MinVersion: tls.VersionTLS13,
		Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}})))
	clusterpb.RegisterClusterServer(gs, &fakeMember{secret: ts[0]})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go gs.Serve(ln)
	defer gs.Stop()

	cfg := testConfig(t, "s2", newKEK(t))
	cfg.Join, cfg.ServerJoinSecretFile, cfg.TrustDomain = ln.Addr().String(), mine, "example.org"
	_, err = New(cfg)
	if err == nil || !strings.Contains(err.Error(), "did not prove it holds the server-join secret") {
		t.Fatalf("join through a member without the secret: %v", err)
	}
	if has, _ := HasIdentity(cfg.DataDir); has {
		t.Fatal("the refused join saved an identity")
	}
}
