package agent

import (
	"context"
	"math/rand/v2"
	"time"

	"github.com/jonboulle/clockwork"
	"github.com/meshca/meshca/internal/alarm"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/status"
)

// Bounds of the agent's calls to a server.
const (
	// callTimeout bounds one call to a server: a server that stopped
	// answering behind an open connection (frozen, or cut off) must not hold
	// the agent; the session then moves to the next server.
	callTimeout = 5 * time.Second
	// unavailableRetries is how often a call refused as Unavailable (the
	// server has no leader, an election is under way) is retried on the
	// same server before the session moves to the next one.
	unavailableRetries = 2
	// unavailableBackoff is the first wait before such a retry; it doubles.
	unavailableBackoff = 200 * time.Millisecond
)

// dialOptions bound reconnection (gRPC's default backoff grows to 120 s)
// and have the connection pinged, so that a server that stopped answering
// on an open connection is noticed even while the Sync stream is idle.
var dialOptions = []grpc.DialOption{
	grpc.WithConnectParams(grpc.ConnectParams{
		Backoff:           backoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 2 * time.Second},
		MinConnectTimeout: 5 * time.Second,
	}),
	grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: 20 * time.Second, Timeout: 5 * time.Second, PermitWithoutStream: true}),
	// A Sync update may carry OPA bundles of up to 4 MiB each (issue 12).
	grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxSyncMessage)),
	// Fixed flow-control windows: gRPC otherwise probes the bandwidth-delay
	// product with a PING after received data, which the server must
	// answer with a write of its own for nearly every signing call.
	grpc.WithInitialWindowSize(flowWindow), grpc.WithInitialConnWindowSize(flowWindow),
}

// flowWindow is the HTTP/2 stream and connection window to a server: more
// than a signing call's response, enough for a bundle update in a few
// round trips.
const flowWindow = 1 << 20

// maxSyncMessage bounds a message from a server: a Sync update with every
// OPA bundle of the trust domain.
const maxSyncMessage = 64 << 20

// callServer runs f with a deadline of callTimeout, and retries it, with
// jittered backoff, while the server refuses it as Unavailable (nothing was
// done: the server has no leader yet, or no quorum), at most
// unavailableRetries times. The last error is returned: the caller ends the
// session, and the agent moves to the next server.
func callServer(ctx context.Context, clock clockwork.Clock, f func(ctx context.Context) error) error {
	wait := unavailableBackoff
	for attempt := 0; ; attempt++ {
		cctx, cancel := context.WithTimeout(ctx, callTimeout)
		err := f(cctx)
		cancel()
		if err == nil || status.Code(err) != codes.Unavailable || attempt >= unavailableRetries || ctx.Err() != nil {
			return err
		}
		if alarm.Sleep(ctx, clock, wait/2+time.Duration(rand.Int64N(int64(wait)))) != nil {
			return err
		}
		wait *= 2
	}
}
