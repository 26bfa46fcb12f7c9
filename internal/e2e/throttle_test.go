package e2e

import (
	"testing"
	"time"

	"github.com/meshca/meshca/internal/retryinfo"
	"github.com/meshca/meshca/proto/operatorpb"
	"github.com/meshca/meshca/server"
	"google.golang.org/grpc/status"
)

// Operator mints over their budget wait for it instead of failing; with
// no wait allowed, the refusal's retry-after is the time until the budget
// holds a CSR again (here at most 1/rate), not a token few milliseconds.
func TestMintsOverTheirRateWait(t *testing.T) {
	const rate = 5 // mints per second
	for _, tc := range []struct {
		name string
		wait time.Duration
	}{{"wait", 0}, {"no wait", -1}} {
		t.Run(tc.name, func(t *testing.T) {
			e := startServerWith(t, func(c *server.Config) { c.OperatorMintRate, c.OperatorMintBurst, c.AdmissionWait = rate, 1, tc.wait })
			mint := func() error {
				_, err := e.op.MintX509SVID(tctx(t, 30*time.Second), &operatorpb.MintX509SVIDRequest{SpiffeId: "spiffe://example.org/w", Csr: agentCSR(t)})
				return err
			}
			for i := 0; i < 3; i++ {
				err := mint()
				if tc.wait < 0 && i > 0 {
					hint, ok := retryinfo.After(err)
					if !ok || hint <= 0 || hint > time.Second/rate {
						t.Fatalf("mint %d over the rate with no wait: %v (hint %v); want ResourceExhausted, retry in (0, %v]", i, err, hint, time.Second/rate)
					}
					continue
				}
				if err != nil {
					t.Fatalf("mint %d at %d/s with a burst of 1: %v (%v); want it admitted after a wait", i, rate, err, status.Code(err))
				}
			}
		})
	}
}
