package devmode

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/meshca/meshca/attest"
	"github.com/meshca/meshca/attest/jointoken"
	"github.com/meshca/meshca/attest/unix"
	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/server"
)

// runDev runs dev in dir until its report arrives, and returns the report
// and a function that stops dev and returns Run's result.
func runDev(t *testing.T, dir string, kek *ca.KEK, bootstrap bool) (Report, func() error) {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	reports := make(chan Report, 1)
	done := make(chan error, 1)
	go func() {
		done <- Run(ctx, Config{
			DataDir: dir, Socket: filepath.Join(dir, "agent.sock"), AdminSocket: filepath.Join(dir, "admin.sock"),
			RaftAddr: "127.0.0.1:0", APIAddr: "127.0.0.1:0", KEK: kek, Bootstrap: bootstrap, TrustDomain: "dev.test",
			UID: os.Getuid(), WorkloadAttestors: []attest.WorkloadAttestor{unix.New(unix.Config{})}, StartTimeout: 30 * time.Second,
		}, func(r Report) error { reports <- r; return nil })
	}()
	select {
	case r := <-reports:
		return r, func() error { cancel(); return <-done }
	case err := <-done:
		cancel()
		t.Fatalf("Run returned before it started: %v", err)
	case <-time.After(time.Minute):
		cancel()
		t.Fatal("dev did not start within a minute")
	}
	panic("unreachable")
}

// The first run bootstraps, attests the agent with a join token and gives
// the caller an SVID under its entry, which verifies against the trust
// bundle dev wrote; a second run reopens all of it: the stored agent
// identity, the same entry, the same roots.
func TestRunThenReopen(t *testing.T) {
	dir, err := os.MkdirTemp("", "devmode")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	kek, err := ca.NewKEK(bytes.Repeat([]byte{7}, ca.KEKSize))
	if err != nil {
		t.Fatal(err)
	}

	r, stop := runDev(t, dir, kek, true)
	if !r.Bootstrapped || r.TrustDomain.Name() != "dev.test" || r.AgentAttestation != jointoken.Name || !r.EntryCreated {
		t.Errorf("first run: %+v", r)
	}
	if want := EntryID(r.TrustDomain, os.Getuid()); r.SVID == nil || r.SVID.ID != want || r.Entry.SpiffeId != want || r.Entry.ParentId != r.AgentID {
		t.Fatalf("first run: SVID %+v, entry %+v, want %s under %s", r.SVID, r.Entry, want, r.AgentID)
	}
	roots, err := server.LoadTrustBundle(r.TrustBundlePath)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(r.SVID.Chain[0])
	if err != nil {
		t.Fatal(err)
	}
	pool, inter := x509.NewCertPool(), x509.NewCertPool()
	for _, c := range roots {
		pool.AddCert(c)
	}
	for _, der := range r.SVID.Chain[1:] {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			t.Fatal(err)
		}
		inter.AddCert(c)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		t.Errorf("the caller's SVID does not verify against %s: %v", r.TrustBundlePath, err)
	}
	if err := stop(); err != nil {
		t.Fatalf("stopping the first run: %v", err)
	}

	r2, stop := runDev(t, dir, kek, false)
	if r2.Bootstrapped || r2.AgentAttestation != AttestationStored || r2.EntryCreated || r2.AgentID != r.AgentID || r2.Entry.Id != r.Entry.Id {
		t.Errorf("reopened: %+v, first %+v", r2, r)
	}
	if err := stop(); err != nil {
		t.Fatalf("stopping the second run: %v", err)
	}

	// Another KEK does not open it.
	other := make([]byte, ca.KEKSize)
	rand.Read(other)
	wrong, err := ca.NewKEK(other)
	if err != nil {
		t.Fatal(err)
	}
	err = Run(t.Context(), Config{DataDir: dir, Socket: filepath.Join(dir, "agent.sock"), AdminSocket: filepath.Join(dir, "admin.sock"),
		RaftAddr: "127.0.0.1:0", APIAddr: "127.0.0.1:0", KEK: wrong}, func(Report) error { return nil })
	if !errors.Is(err, ca.ErrWrongKEK) {
		t.Errorf("with another KEK: %v, want ca.ErrWrongKEK", err)
	}
}

// An error of the started callback stops dev, and Run returns it.
func TestStartedErrorStops(t *testing.T) {
	dir, err := os.MkdirTemp("", "devmode")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	kek, err := ca.NewKEK(bytes.Repeat([]byte{9}, ca.KEKSize))
	if err != nil {
		t.Fatal(err)
	}
	boom := errors.New("cannot print")
	err = Run(t.Context(), Config{
		DataDir: dir, Socket: filepath.Join(dir, "agent.sock"), AdminSocket: filepath.Join(dir, "admin.sock"),
		RaftAddr: "127.0.0.1:0", APIAddr: "127.0.0.1:0", KEK: kek, Bootstrap: true, TrustDomain: "dev.test",
		UID: os.Getuid(), WorkloadAttestors: []attest.WorkloadAttestor{unix.New(unix.Config{})}, StartTimeout: 30 * time.Second,
	}, func(Report) error { return boom })
	if !errors.Is(err, boom) {
		t.Fatalf("Run = %v, want the callback's error", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "agent.sock")); err == nil {
		t.Error("the agent's socket is left after Run returned")
	}
}
