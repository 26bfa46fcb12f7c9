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
