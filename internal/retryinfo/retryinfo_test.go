package retryinfo

import (
	"errors"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestRoundTrip(t *testing.T) {
	err := Exhausted(1500*time.Millisecond, "queue full (%d waiting)", 7)
	if status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("code %v", status.Code(err))
	}
	if d, ok := After(err); !ok || d != 1500*time.Millisecond {
		t.Errorf("After = %v, %v; want 1.5s", d, ok)
	}
	if _, ok := After(errors.New("other")); ok {
		t.Error("a plain error carries a hint")
	}
	if d, ok := After(status.Error(codes.ResourceExhausted, "no details")); !ok || d != time.Second {
		t.Errorf("no details: %v, %v; want the 1s default", d, ok)
	}
}

// A hint from the wire is bounded: never negative (an agent would panic
// drawing its jitter), never longer than MaxHint.
func TestHintFromTheWireIsBounded(t *testing.T) {
	for _, tc := range []struct{ sent, want time.Duration }{
		{-time.Hour, 0},
		{-1, 0},
		{100 * 365 * 24 * time.Hour, MaxHint},
	} {
		if d, ok := After(Exhausted(tc.sent, "busy")); !ok || d != tc.want {
			t.Errorf("After(hint %v) = %v, %v; want %v", tc.sent, d, ok, tc.want)
		}
	}
}
