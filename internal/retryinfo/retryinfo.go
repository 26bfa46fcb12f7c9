// Package retryinfo carries retry-after hints in gRPC errors
// (google.rpc.RetryInfo), so a server under load can tell clients when to
// come back instead of failing them.
package retryinfo

import (
	"fmt"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
)

// Exhausted returns a ResourceExhausted error asking to retry after d.
func Exhausted(d time.Duration, format string, args ...any) error {
	st := status.New(codes.ResourceExhausted, fmt.Sprintf(format, args...)+fmt.Sprintf("; retry in %s", d.Round(time.Millisecond)))
	if withInfo, err := st.WithDetails(&errdetails.RetryInfo{RetryDelay: durationpb.New(d)}); err == nil {
		return withInfo.Err()
	}
	return st.Err()
}

// MaxHint bounds the hint After returns: it comes from the wire, and a
// client must neither wait for ever nor be told to wait a negative time.
const MaxHint = 5 * time.Minute

// After returns the retry-after hint of a ResourceExhausted error (one
// second when it carries none), within [0, MaxHint]; ok is false for any
// other error.
func After(err error) (d time.Duration, ok bool) {
	st, isStatus := status.FromError(err)
	if !isStatus || st.Code() != codes.ResourceExhausted {
		return 0, false
	}
	for _, det := range st.Details() {
		if ri, isInfo := det.(*errdetails.RetryInfo); isInfo {
			return min(max(ri.GetRetryDelay().AsDuration(), 0), MaxHint), true
		}
	}
	return time.Second, true
}
