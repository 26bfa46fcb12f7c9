package sdsclient_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"github.com/meshca/meshca/sds"
	"github.com/meshca/meshca/sds/sdsclient"
	"google.golang.org/grpc"
)

// source grants "ROOTCA" and refuses everything else.
type source struct{ r *sds.Resource }

func (s source) Resolve(_ context.Context, name string) (sds.Result, error) {
	if name == "ROOTCA" {
		return sds.Grant(s.r, "bundle"), nil
	}
	return sds.Refuse("not this workload's"), nil
}

func (s source) Names(context.Context) ([]string, []string, error) {
	return []string{"ROOTCA"}, nil, nil
}

func serve(t *testing.T) (socket string) {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), IsCA: true, BasicConstraintsValid: true,
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	sec, err := sds.ValidationContextSecret("ROOTCA", sds.ValidationContextParams{Roots: [][]byte{der}})
	if err != nil {
		t.Fatal(err)
	}
	r, err := sds.NewResource(sec, "v1")
	if err != nil {
		t.Fatal(err)
	}
	var nodes = make(chan string, 8)
	srv, err := sds.New(sds.Config{Secrets: func(_ context.Context, node *corev3.Node) (sds.Source, error) {
		nodes <- node.GetId()
		return source{r}, nil
	}})
	if err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "sdsc")
	if err != nil {
		t.Fatal(err)
	}
	socket = filepath.Join(dir, "s.sock")
	lis, err := net.Listen("unix", socket)
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	srv.Register(gs)
	done := make(chan struct{})
	go func() { defer close(done); _ = gs.Serve(lis) }()
	t.Cleanup(func() {
		gs.Stop()
		<-done
		srv.Close()
		os.RemoveAll(dir)
		close(nodes)
		for n := range nodes {
			if n != sdsclient.DefaultNodeID {
				t.Errorf("node id %q", n)
			}
		}
	})
	return socket
}

func TestStreamAndFetch(t *testing.T) {
	c, err := sdsclient.Dial(serve(t))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	for _, get := range []func(context.Context, ...string) (*sdsclient.Response, error){c.Stream, c.Fetch} {
		r, err := get(ctx, "ROOTCA")
		if err != nil {
			t.Fatal(err)
		}
		if len(r.Secrets) != 1 || r.Secrets[0].GetName() != "ROOTCA" || r.VersionInfo == "" || r.Nonce == "" {
			t.Fatalf("response %+v", r)
		}
		files, err := sdsclient.Files(r.Secrets[0])
		if err != nil || len(files) != 1 || files[0].Name != "ROOTCA.bundle.pem" || files[0].Secret {
			t.Fatalf("files %+v, %v", files, err)
		}

		r, err = get(ctx, "ROOTCA", "default")
		var miss *sdsclient.MissingError
		if !errors.As(err, &miss) || !slices.Equal(miss.Names, []string{"default"}) || len(r.Secrets) != 1 {
			t.Fatalf("refused default: %v, %+v", err, r)
		}
	}
}

func TestFileName(t *testing.T) {
	for in, want := range map[string]string{
		"default":                        "default",
		"default~sm2":                    "default~sm2",
		"spiffe://example.org/ns/a/sa/b": "spiffe_example.org_ns_a_sa_b",
		"spiffe://example.org~sm2":       "spiffe_example.org~sm2",
		"../../etc/passwd":               "_.._.._etc_passwd",
		"":                               "_",
	} {
		if got := sdsclient.FileName(in); got != want {
			t.Errorf("FileName(%q) = %q, want %q", in, got, want)
		}
	}
}
