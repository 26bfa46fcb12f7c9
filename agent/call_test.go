package agent

import (
	"context"
	"testing"
	"time"

	"github.com/jonboulle/clockwork"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// callServer gives each call a deadline, retries Unavailable a bounded
// number of times, and never retries a refusal.
func TestCallServer(t *testing.T) {
	unavailable := status.Error(codes.Unavailable, "cluster: no leader")
	for _, tc := range []struct {
		name    string
		results []error
		calls   int
		want    codes.Code
	}{
		{"ok/first", []error{nil}, 1, codes.OK},
		{"ok/after an election", []error{unavailable, unavailable, nil}, 3, codes.OK},
		{"fail/no leader for good", []error{unavailable, unavailable, unavailable, nil}, 3, codes.Unavailable},
		{"fail/refusal not retried", []error{status.Error(codes.PermissionDenied, "banned"), nil}, 1, codes.PermissionDenied},
		{"fail/bad request not retried", []error{status.Error(codes.InvalidArgument, "bad CSR"), nil}, 1, codes.InvalidArgument},
	} {
		calls := 0
		err := callServer(context.Background(), clockwork.NewRealClock(), func(ctx context.Context) error {
			if d, ok := ctx.Deadline(); !ok || time.Until(d) > callTimeout {
				t.Errorf("%s: call without the %s deadline", tc.name, callTimeout)
			}
			calls++
			return tc.results[calls-1]
		})
		if status.Code(err) != tc.want || calls != tc.calls {
			t.Errorf("%s: callServer = %v after %d calls; want %v after %d", tc.name, err, calls, tc.want, tc.calls)
		}
	}
}
