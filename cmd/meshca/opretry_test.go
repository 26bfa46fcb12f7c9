package main

import (
	"context"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// An operator call refused as Unavailable is retried until it succeeds or
// its deadline comes; a refusal, or a server that cannot be reached, is
// returned at once.
func TestRetryUnavailable(t *testing.T) {
	noLeader := status.Error(codes.Unavailable, "create join token: cluster: no leader for 1.6s")
	for _, tc := range []struct {
		name    string
		results []error
		timeout time.Duration
		calls   int
		want    codes.Code
	}{
		{"ok/after an election", []error{noLeader, noLeader, nil}, 10 * time.Second, 3, codes.OK},
		{"fail/refusal", []error{status.Error(codes.InvalidArgument, "bad TTL"), nil}, 10 * time.Second, 1, codes.InvalidArgument},
		{"fail/unreachable", []error{status.Error(codes.Unavailable, `connection error: desc = "transport: Error while dialing: dial unix /x: connect: no such file or directory"`), nil}, 10 * time.Second, 1, codes.Unavailable},
		{"fail/no leader until the deadline", nil, 800 * time.Millisecond, 0, codes.Unavailable},
	} {
		calls := 0
		invoker := func(ctx context.Context, _ string, _, _ any, _ *grpc.ClientConn, _ ...grpc.CallOption) error {
			calls++
			if tc.results == nil {
				return noLeader
			}
			return tc.results[calls-1]
		}
		ctx, cancel := context.WithTimeout(context.Background(), tc.timeout)
		start := time.Now()
		err := retryUnavailable(ctx, "/m", nil, nil, nil, invoker)
		cancel()
		if status.Code(err) != tc.want || tc.calls > 0 && calls != tc.calls {
			t.Errorf("%s: %v after %d calls; want %v after %d", tc.name, err, calls, tc.want, tc.calls)
		}
		if tc.results == nil && (calls < 2 || time.Since(start) > tc.timeout+100*time.Millisecond) {
			t.Errorf("%s: %d calls in %s; want retries until the %s deadline, not past it", tc.name, calls, time.Since(start), tc.timeout)
		}
	}
}
