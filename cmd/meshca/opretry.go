package main

import (
	"context"
	"math/rand/v2"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// opRetryBackoff is the first wait before an operator call refused as
// Unavailable is sent again; it doubles up to opRetryMaxBackoff. Retries
// stop after opRetryWindow (an election takes a second or two; a server cut
// off from its quorum stays so), or at --timeout if that comes first.
const (
	opRetryBackoff    = 100 * time.Millisecond
	opRetryMaxBackoff = 2 * time.Second
	opRetryWindow     = 15 * time.Second
)

// retryUnavailable retries a unary operator call that the server refused as
// Unavailable: it carried nothing out (no leader yet, no quorum), so sending
// it again is safe, and an election usually ends within a second or two.
// It retries with jittered backoff for opRetryWindow, within the call's
// deadline (--timeout), then returns the last refusal, which names the
// cause. A failure to reach the server at all is returned at once, for
// callError to explain.
func retryUnavailable(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	wait, stop := opRetryBackoff, time.Now().Add(opRetryWindow)
	for {
		err := invoker(ctx, method, req, reply, cc, opts...)
		if err == nil || !serverRefusedUnavailable(err) {
			return err
		}
		pause := wait/2 + time.Duration(rand.Int64N(int64(wait)))
		if d, ok := ctx.Deadline(); !ok || time.Until(d) < pause || time.Now().Add(pause).After(stop) {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(pause):
		}
		wait = min(wait*2, opRetryMaxBackoff)
	}
}

// serverRefusedUnavailable reports whether err is an Unavailable answer of
// the server itself, not a failure of the connection to it (gRPC's own
// transport errors say "connection error" or name the transport).
func serverRefusedUnavailable(err error) bool {
	st, ok := status.FromError(err)
	if !ok || st.Code() != codes.Unavailable {
		return false
	}
	msg := st.Message()
	return !strings.Contains(msg, "connection error") && !strings.Contains(msg, "transport") && !strings.Contains(msg, "dial ")
}
