package peercred

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// A gRPC server with these credentials learns the caller's real pid, uid
// and gid from the kernel.
func TestPeerCredentials(t *testing.T) {
	dir, err := os.MkdirTemp("", "pc")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	sock := filepath.Join(dir, "s")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan AuthInfo, 1)
	gs := grpc.NewServer(grpc.Creds(New()), grpc.UnaryInterceptor(func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		if a, ok := FromContext(ctx); ok {
			got <- a
		}
		return h(ctx, req)
	}))
	healthpb.RegisterHealthServer(gs, health.NewServer())
	go gs.Serve(ln)
	defer gs.Stop()

	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
		t.Fatal(err)
	}
	a := <-got
	if a.PID != int32(os.Getpid()) || a.UID != uint32(os.Getuid()) || a.GID != uint32(os.Getgid()) {
		t.Errorf("peer %+v, want pid %d uid %d gid %d", a, os.Getpid(), os.Getuid(), os.Getgid())
	}
}

// Only Unix connections are accepted.
func TestRefusesOtherConnections(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	if _, _, err := New().ServerHandshake(a); err == nil {
		t.Error("accepted a connection that is not a Unix socket")
	}
}
