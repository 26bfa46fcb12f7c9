package e2e

import (
	"context"
	"crypto/x509"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jonboulle/clockwork"
	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/proto/operatorpb"
	"github.com/meshca/meshca/server"
)

// With the real clock and one-minute intermediates, every server of a
// 3-server cluster rotates its intermediates twice while operators mint
// through all of them without pause, and not one issuance fails: the swap
// of issuers is atomic and the next intermediate is ready before it is
// needed.
func TestIntermediatesRotateUnderLoad(t *testing.T) {
	f := newFleet(t, fleetOpts{servers: 3, agents: 0, clock: clockwork.NewRealClock(),
		tune: func(c *server.Config) { c.IntermediateTTL = time.Minute }})
	roots := x509.NewCertPool()
	for _, r := range f.e.bundle {
		roots.AddCert(r)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var (
		mu       sync.Mutex
		issuers  = map[string]map[string]bool{} // server -> intermediate serials seen
		ok, fail atomic.Int64
		firstErr error
		wg       sync.WaitGroup
	)
	done := func() bool {
		mu.Lock()
		defer mu.Unlock()
		for _, m := range f.members {
			if len(issuers[m.cfg.NodeID]) < 3 { // the first one and two successors
				return false
			}
		}
		return true
	}
	for _, m := range f.members {
		op := operatorClient(t, m.srv.AdminSocket())
		node := m.cfg.NodeID
		for w := 0; w < 2; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				key, err := ca.ECDSA.GenerateKey()
				if err != nil {
					panic(err)
				}
				csr, err := ca.ECDSA.CreateCSR(key)
				if err != nil {
					panic(err)
				}
				for ctx.Err() == nil && !done() {
					cctx, ccancel := context.WithTimeout(ctx, 20*time.Second)
					resp, err := op.MintX509SVID(cctx, &operatorpb.MintX509SVIDRequest{SpiffeId: "spiffe://example.org/load/" + node, Csr: csr})
					ccancel()
					if err == nil {
						err = verifyChain(resp.Chain, roots)
					}
					if err != nil {
						if ctx.Err() != nil {
							return
						}
						fail.Add(1)
						mu.Lock()
						if firstErr == nil {
							firstErr = fmt.Errorf("%s: %w", node, err)
						}
						mu.Unlock()
						continue
					}
					ok.Add(1)
					inter, _ := x509.ParseCertificate(resp.Chain[1])
					mu.Lock()
					if issuers[node] == nil {
						issuers[node] = map[string]bool{}
					}
					issuers[node][inter.SerialNumber.Text(16)] = true
					mu.Unlock()
				}
			}()
		}
	}
	wg.Wait()
	if !done() {
		t.Fatalf("after %s not every server rotated twice: %v", 3*time.Minute, issuers)
	}
	if n := fail.Load(); n > 0 {
		t.Fatalf("%d of %d issuances failed during rotation; first: %v", n, n+ok.Load(), firstErr)
	}
	t.Logf("%d certificates issued across two rotations of every server's intermediate, none failed", ok.Load())
}

// verifyChain checks that a minted chain verifies now against the roots.
func verifyChain(chain [][]byte, roots *x509.CertPool) error {
	leaf, err := x509.ParseCertificate(chain[0])
	if err != nil {
		return err
	}
	inter := x509.NewCertPool()
	for _, der := range chain[1:] {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return err
		}
		inter.AddCert(c)
	}
	_, err = leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
	return err
}
